package gwlbsim

import "time"

// Report is a JSON snapshot of a Sim's counters and recent violations, as
// cmd/gwlbsim serves it on /stats and the end-to-end suite reads it.
type Report struct {
	Sent             uint64            `json:"sent"`
	Received         uint64            `json:"received"`
	Delivered        uint64            `json:"delivered"`
	NoHost           uint64            `json:"no_host"`
	Filtered         uint64            `json:"filtered"`
	SendErrors       uint64            `json:"send_errors"`
	DeviceErrors     uint64            `json:"device_errors"`
	ViolationCount   uint64            `json:"violation_count"`
	Violations       map[string]uint64 `json:"violations"`
	RecentViolations []string          `json:"recent_violations"`
}

// Report returns the Sim's counters and its recent violations.
func (s *Sim) Report() Report {
	st := s.Stats()
	r := Report{
		Sent: st.Sent, Received: st.Received, Delivered: st.Delivered, NoHost: st.NoHost,
		Filtered: st.Filtered, SendErrors: st.SendErrors, DeviceErrors: st.DeviceErrors,
		ViolationCount: st.ViolationCount(), Violations: st.Violations,
		RecentViolations: []string{},
	}
	for _, v := range s.Violations() {
		r.RecentViolations = append(r.RecentViolations, v.Time.Format(time.RFC3339Nano)+" "+v.String())
	}
	return r
}

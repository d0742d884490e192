package proxy

import (
	"sync"
	"time"
)

// parking is what a parked connection waits for: readiness callbacks on
// its legs and a timer, of which the first to fire serves the connection
// on. Each park is a generation, so that a wake-up of an earlier one is
// stale. Both HTTP legs park this way.
type parking struct {
	mu     sync.Mutex
	gen    uint64
	parked bool
	stops  [2]func() bool
	timer  *time.Timer
}

// park starts a generation; arm registers its wake-ups, each told the
// generation, under p's lock (a callback that fires at once waits for it).
func (p *parking) park(arm func(gen uint64)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.parked = true
	arm(p.gen)
}

// setTimer, under arm, sets the generation's timer.
func (p *parking) setTimer(d time.Duration, wake func()) {
	p.timer = time.AfterFunc(d, wake)
}

// armTimer sets a timer on the current park if it has none.
func (p *parking) armTimer(d time.Duration, wake func(gen uint64)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.parked && p.timer == nil {
		gen := p.gen
		p.timer = time.AfterFunc(d, func() { wake(gen) })
	}
}

// claim reports whether a wake-up of generation gen is the first; it then
// cancels the others. gen 0 claims whatever park is current (the
// connection is over).
func (p *parking) claim(gen uint64) bool {
	p.mu.Lock()
	if !p.parked || gen != 0 && gen != p.gen {
		p.mu.Unlock()
		return false
	}
	p.parked = false
	stops, timer := p.stops, p.timer
	p.stops, p.timer = [2]func() bool{}, nil
	p.mu.Unlock()
	for _, stop := range stops {
		if stop != nil {
			stop()
		}
	}
	if timer != nil {
		timer.Stop()
	}
	return true
}

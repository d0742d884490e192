package interceptors

import (
	"fmt"
	"slices"
	"sync"
)

var (
	regMu    sync.RWMutex
	registry = map[string]Info{}
)

// Register adds an interceptor; call it from init. It panics on an empty,
// malformed or duplicate id, or a nil New, since those are programming errors.
func Register(info Info) {
	if !validID(info.ID) {
		panic(fmt.Sprintf("interceptors: invalid id %q (want [a-z0-9_]+)", info.ID))
	}
	if info.New == nil {
		panic(fmt.Sprintf("interceptors: %s: New is nil", info.ID))
	}
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[info.ID]; dup {
		panic(fmt.Sprintf("interceptors: %s registered twice", info.ID))
	}
	registry[info.ID] = info
}

// Lookup returns the registered interceptor with id.
func Lookup(id string) (Info, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	i, ok := registry[id]
	return i, ok
}

// IDs returns the registered ids, sorted.
func IDs() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	ids := make([]string, 0, len(registry))
	for id := range registry {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

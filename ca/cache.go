package ca

import (
	"crypto/tls"
	"time"
)

// entry is a cached leaf, linked into the LRU list.
type entry struct {
	key        string
	cert       *tls.Certificate
	gen        *generation // the intermediate that signed it
	notAfter   time.Time
	prev, next *entry
}

// lru is a bounded least-recently-used map of leaves. It is not safe for
// concurrent use: Authority.mu guards it.
type lru struct {
	max   int
	items map[string]*entry
	head  entry // sentinel: head.next is the most recently used, head.prev the least
}

func newLRU(max int) *lru {
	c := &lru{max: max, items: make(map[string]*entry)}
	c.head.next, c.head.prev = &c.head, &c.head
	return c
}

func (c *lru) len() int { return len(c.items) }

// get returns the entry for key and marks it most recently used. key may be
// a string converted from a byte slice at the call: looking it up does not
// allocate.
func (c *lru) get(key string) *entry {
	e := c.items[key]
	if e != nil {
		c.unlink(e)
		c.pushFront(e)
	}
	return e
}

// add inserts or replaces e and reports how many entries it evicted to stay
// within max.
func (c *lru) add(e *entry) (evicted int) {
	if old := c.items[e.key]; old != nil {
		c.unlink(old)
	}
	c.items[e.key] = e
	c.pushFront(e)
	for len(c.items) > c.max {
		last := c.head.prev
		c.unlink(last)
		delete(c.items, last.key)
		evicted++
	}
	return evicted
}

// clear removes every entry.
func (c *lru) clear() {
	clear(c.items)
	c.head.next, c.head.prev = &c.head, &c.head
}

func (c *lru) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *lru) pushFront(e *entry) {
	e.prev, e.next = &c.head, c.head.next
	c.head.next.prev = e
	c.head.next = e
}

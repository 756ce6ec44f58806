package main

import (
	"math"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// shrinkResult is the smallest failing subhistory found for one key.
type shrinkResult struct {
	Ops      []*Op // sorted by call time
	Complete bool  // 1-minimal: removing any single op (with its dependents) makes it pass
	Trials   int
}

// shrinker minimizes one key's failing history.
//
// Removing writes from a history can create violations that the original
// never had, and a report built on one would send a reader after a bug that
// is not there. So an op is always removed together with every op whose
// outcome it could have influenced, which makes the result a faithful
// witness: if the shrunk history is not linearizable, neither is the
// original (restricting a linearization of the original to the kept ops
// leaves every kept op seeing the same state). The dependents are:
//
//   - value dependents: the reads that observed the value it wrote and the
//     cas ops whose expect names that value (transitively: a removed cas
//     takes its own readers along). Values are unique, so the writer of a
//     value read is the only op that can explain the read.
//   - state dependents: an op whose outcome depends on the state but names
//     no unique value (get not found, any ok delete, a cas that did not swap
//     or expected an absent key, an unknown cas) depends on every write that
//     may be linearized before it, unless a kept op that certainly resets
//     the key (ok put, swapped cas, delete that found the key) is forced to
//     lie between the two. Otherwise two deletes that both found the key
//     could "fail" only because the second put they consumed was removed.
type shrinker struct {
	ops        []*Op // one key, sorted by call time
	alive      []bool
	dependents map[string][]int // written value -> ops that name it
	resets     []int            // ops that certainly reset the key, by return time
	ret        []int64          // latest possible linearization time of each op
}

// changesState: the op may change the key's state.
func changesState(op *Op) bool {
	switch op.Kind {
	case KindPut:
		return true
	case KindDelete:
		return op.Status == StatusUnknown || op.Existed
	case KindCas:
		return op.Status == StatusUnknown || op.Swapped
	}
	return false
}

// certainReset: the op definitely set the key's state, whatever it was.
func certainReset(op *Op) bool {
	return op.Status == StatusOK && changesState(op)
}

// stateSensitive: the op's legality or effect depends on the state in a way
// no unique value pins down.
func stateSensitive(op *Op) bool {
	if op.Status == StatusUnknown {
		return op.Kind == KindCas
	}
	switch op.Kind {
	case KindGet:
		return !op.Found
	case KindDelete:
		return true
	case KindCas:
		return !op.Swapped || op.Expect == nil
	}
	return false
}

// latestPoints returns, per op, the latest time it can be linearized at in
// any linearization of ops: its return, or for an unknown write whose value
// was observed, the earliest return of an observer (it must precede it);
// otherwise never bounded. Bounds derived from the whole key history stay
// valid for every subhistory the shrinker considers, because faithfulness is
// argued about linearizations of the whole history.
func latestPoints(ops []*Op) []int64 {
	observed := make(map[string]int64)
	note := func(v string, t int64) {
		if old, ok := observed[v]; !ok || t < old {
			observed[v] = t
		}
	}
	for _, op := range ops {
		switch {
		case op.Status != StatusOK:
		case op.Kind == KindGet && op.Found:
			note(op.Value, op.ReturnNs)
		case op.Kind == KindCas && op.Swapped && op.Expect != nil:
			note(*op.Expect, op.ReturnNs)
		}
	}
	out := make([]int64, len(ops))
	for i, op := range ops {
		out[i] = math.MaxInt64
		if op.Status == StatusOK {
			out[i] = op.ReturnNs
		} else if v, ok := op.writes(); ok {
			if t, seen := observed[v]; seen {
				out[i] = max(t, op.CallNs)
			}
		}
	}
	return out
}

// shrink reduces a non-linearizable single-key history to a 1-minimal
// failing subhistory, so a report shows the handful of ops that conflict
// instead of thousands.
//
// It first tries removing chunks (halves, quarters, ...) since a long
// history usually shrinks a lot in a few big steps, then greedily removes
// single ops until a whole pass removes nothing. A trial that times out
// counts as "still passes" (the op is kept) and marks the result incomplete,
// as does running out of budget.
func (c *checker) shrink(ops []*Op, budget, trialLimit time.Duration) shrinkResult {
	deadline := time.Now().Add(budget)
	s := &shrinker{ops: ops, alive: make([]bool, len(ops)), dependents: make(map[string][]int), ret: latestPoints(ops)}
	for i, op := range ops {
		s.alive[i] = true
		if certainReset(op) {
			s.resets = append(s.resets, i)
		}
		switch {
		case op.Kind == KindGet && op.Found:
			s.dependents[op.Value] = append(s.dependents[op.Value], i)
		case op.Kind == KindCas && op.Expect != nil:
			s.dependents[*op.Expect] = append(s.dependents[*op.Expect], i)
		}
	}
	sort.SliceStable(s.resets, func(a, b int) bool { return ops[s.resets[a]].ReturnNs < ops[s.resets[b]].ReturnNs })

	var res shrinkResult
	outOfTime, timedOut := false, false
	// try removes rm if the rest is still not linearizable.
	try := func(rm []int) bool {
		gone := make(map[int]bool, len(rm))
		for _, i := range rm {
			gone[i] = true
		}
		var cand []*Op
		for i, op := range ops {
			if s.alive[i] && !gone[i] {
				cand = append(cand, op)
			}
		}
		if len(cand) == 0 {
			return false // an empty history is linearizable
		}
		left := time.Until(deadline)
		if left <= 0 {
			outOfTime = true
			return false
		}
		res.Trials++
		switch c.check(cand, min(left, trialLimit)) {
		case porcupine.Illegal:
			for _, i := range rm {
				s.alive[i] = false
			}
			return true
		case porcupine.Unknown:
			timedOut = true
			outOfTime = time.Until(deadline) <= 0
		}
		return false
	}

	for size := len(ops) / 2; size >= 2 && !outOfTime; size /= 2 {
		l := s.live()
		for start := 0; start < len(l) && !outOfTime; start += size {
			var chunk []int
			for _, i := range l[start:min(start+size, len(l))] {
				if s.alive[i] {
					chunk = append(chunk, i)
				}
			}
			if len(chunk) > 0 {
				try(s.closure(chunk))
			}
		}
	}

	// Greedy single-op passes, latest op first (the conflict is usually
	// early, so late ops go quickly). A pass that removes nothing and had no
	// timed-out trial proves 1-minimality.
	for !outOfTime {
		changed := false
		timedOut = false
		for i := len(ops) - 1; i >= 0 && !outOfTime; i-- {
			if s.alive[i] && try(s.closure([]int{i})) {
				changed = true
			}
		}
		if !changed {
			res.Complete = !outOfTime && !timedOut
			break
		}
	}
	for _, i := range s.live() {
		res.Ops = append(res.Ops, ops[i])
	}
	return res
}

func (s *shrinker) live() []int {
	var out []int
	for i, a := range s.alive {
		if a {
			out = append(out, i)
		}
	}
	return out
}

// closure is seeds plus, transitively, everything that depends on them
// (see shrinker), among the alive ops.
func (s *shrinker) closure(seeds []int) []int {
	gone := make([]bool, len(s.ops))
	var out []int
	addValueClosure := func(seeds []int) {
		stack := append([]int(nil), seeds...)
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if gone[i] || !s.alive[i] {
				continue
			}
			gone[i] = true
			out = append(out, i)
			if v, ok := s.ops[i].writes(); ok {
				stack = append(stack, s.dependents[v]...)
			}
		}
	}
	addValueClosure(seeds)
	for {
		// Kept resets by return time, with the running maximum of their
		// call times: the latest reset forced before an op screens every
		// write that returned before that reset was called.
		var resetRet, resetMaxCall []int64
		for _, i := range s.resets {
			if s.alive[i] && !gone[i] {
				m := s.ops[i].CallNs
				if n := len(resetMaxCall); n > 0 {
					m = max(m, resetMaxCall[n-1])
				}
				resetRet, resetMaxCall = append(resetRet, s.ops[i].ReturnNs), append(resetMaxCall, m)
			}
		}
		// Removed writes by call time, with the running maximum of their
		// return times.
		var wCall, wMaxRet []int64
		for i, op := range s.ops {
			if gone[i] && changesState(op) {
				m := s.ret[i]
				if n := len(wMaxRet); n > 0 {
					m = max(m, wMaxRet[n-1])
				}
				wCall, wMaxRet = append(wCall, op.CallNs), append(wMaxRet, m)
			}
		}
		if len(wCall) == 0 {
			return out
		}
		var lost []int
		for i, op := range s.ops {
			if !s.alive[i] || gone[i] || !stateSensitive(op) {
				continue
			}
			screen := int64(math.MinInt64) // writes returning before this are screened off
			if k := sort.Search(len(resetRet), func(j int) bool { return resetRet[j] >= op.CallNs }); k > 0 {
				screen = resetMaxCall[k-1]
			}
			// Some removed write may precede op (call <= op's return) and is not screened.
			k := sort.Search(len(wCall), func(j int) bool { return wCall[j] > s.ret[i] })
			if k > 0 && wMaxRet[k-1] >= screen {
				lost = append(lost, i)
			}
		}
		if len(lost) == 0 {
			return out
		}
		addValueClosure(lost)
	}
}

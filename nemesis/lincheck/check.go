package main

import (
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// unlimited stands in for "no timeout": porcupine reads 0 as no limit, but
// our checker reads a non-positive timeout as "already expired".
const unlimited = time.Duration(1 << 62)

// Options bound the work done on one history.
type Options struct {
	Timeout      time.Duration // total for the linearizability check; 0 = no limit
	ShrinkBudget time.Duration // total for minimizing failures; 0 = do not minimize
}

// KeyOutcome is the verdict for one key.
type KeyOutcome struct {
	Key    string
	Ops    []*Op // the checked ops on this key, sorted by call time
	Result porcupine.CheckResult
	Shrunk *shrinkResult // for Illegal keys, when minimization ran
}

// Report is the verdict for a whole history.
type Report struct {
	Sel        Selection
	Keys       []KeyOutcome // sorted by key
	CheckTime  time.Duration
	ShrinkTime time.Duration
	checker    *checker
}

// Failing returns the keys that are definitely not linearizable.
func (r *Report) Failing() []KeyOutcome { return r.filter(porcupine.Illegal) }

// TimedOut returns the keys the checker could not decide in time.
func (r *Report) TimedOut() []KeyOutcome { return r.filter(porcupine.Unknown) }

func (r *Report) filter(res porcupine.CheckResult) []KeyOutcome {
	var out []KeyOutcome
	for _, k := range r.Keys {
		if k.Result == res {
			out = append(out, k)
		}
	}
	return out
}

// CheckHistory checks the selected part of a history key by key and
// minimizes every failing key.
//
// Keys are checked one porcupine call each rather than in a single
// partitioned call, so a violation or a timeout is attributed to its key.
// The model still carries porcupine's Partition functions, which the
// multi-key visualization relies on.
func CheckHistory(all []*Op, reads map[string]bool, opt Options) *Report {
	rep := &Report{Sel: Select(all, reads)}
	rep.checker = newChecker(rep.Sel.Ops)
	idx := make(map[string]int)
	for _, op := range rep.Sel.Ops {
		i, ok := idx[op.Key]
		if !ok {
			i = len(rep.Keys)
			idx[op.Key] = i
			rep.Keys = append(rep.Keys, KeyOutcome{Key: op.Key})
		}
		rep.Keys[i].Ops = append(rep.Keys[i].Ops, op) // stays sorted by call time
	}
	sort.Slice(rep.Keys, func(i, j int) bool { return rep.Keys[i].Key < rep.Keys[j].Key })

	start := time.Now()
	checkKeys(rep.checker, rep.Keys, opt.Timeout)
	rep.CheckTime = time.Since(start)

	failing := len(rep.Failing())
	if opt.ShrinkBudget > 0 && failing > 0 {
		start = time.Now()
		deadline := start.Add(opt.ShrinkBudget)
		trialLimit := opt.Timeout
		if trialLimit == 0 {
			trialLimit = unlimited
		}
		// Each failing key gets an equal share of what is left, so one
		// stubborn key cannot starve the others.
		for i := range rep.Keys {
			k := &rep.Keys[i]
			if k.Result != porcupine.Illegal {
				continue
			}
			share := time.Until(deadline) / time.Duration(failing)
			failing--
			s := rep.checker.shrink(k.Ops, share, trialLimit)
			k.Shrunk = &s
		}
		rep.ShrinkTime = time.Since(start)
	}
	return rep
}

// checkKeys checks every key, biggest first, on one worker per CPU, all
// sharing one deadline.
func checkKeys(c *checker, keys []KeyOutcome, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	remaining := func() time.Duration {
		if timeout == 0 {
			return unlimited
		}
		return time.Until(deadline)
	}
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(keys[order[a]].Ops) > len(keys[order[b]].Ops) })

	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(keys)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				keys[i].Result = c.check(keys[i].Ops, remaining())
			}
		}()
	}
	for _, i := range order {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

// visualize writes porcupine's HTML view of the complete (not minimized)
// histories of the given keys.
func (r *Report) visualize(keys []KeyOutcome, timeout time.Duration, path string) error {
	var ops []*Op
	for _, k := range keys {
		ops = append(ops, k.Ops...)
	}
	if timeout == 0 {
		timeout = unlimited
	}
	_, info := porcupine.CheckOperationsVerbose(kvModel, r.checker.operations(ops), timeout)
	return porcupine.VisualizePath(kvModel, info, path)
}

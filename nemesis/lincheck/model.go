package main

import (
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// kvState is the state of one key. The model is per key because histories are
// partitioned by key, which keeps each search small. It is a comparable value
// so porcupine's default == equality works.
type kvState struct {
	present bool
	value   string
}

// kvInput is what the client asked for.
type kvInput struct {
	kind         Kind
	key          string
	value        string // put, cas: the value to write
	expect       string // cas: required current value ...
	expectAbsent bool   // ... or, when set, that the key be absent
	consistency  string // get: shown only; selection happens before checking
}

// kvOutput is what the client observed.
type kvOutput struct {
	unknown bool   // outcome unknown: the op may or may not have happened
	flag    bool   // delete: existed; cas: swapped; get: found
	value   string // get: the value read, when found
}

func inputOf(op *Op) kvInput {
	in := kvInput{kind: op.Kind, key: op.Key, value: op.Value, consistency: op.Consistency}
	if op.Kind == KindCas {
		if op.Expect == nil {
			in.expectAbsent = true
		} else {
			in.expect = *op.Expect
		}
	}
	return in
}

func outputOf(op *Op) kvOutput {
	out := kvOutput{unknown: op.Status == StatusUnknown}
	switch op.Kind {
	case KindDelete:
		out.flag = op.Existed
	case KindCas:
		out.flag = op.Swapped
	case KindGet:
		out.flag, out.value = op.Found, op.Value
	}
	return out
}

// casMatches reports whether a cas precondition holds in st.
func casMatches(in kvInput, st kvState) bool {
	if in.expectAbsent {
		return !st.present
	}
	return st.present && st.value == in.expect
}

// step is the sequential specification of one key.
//
// Writes with an unknown outcome are modelled deterministically: the step is
// always legal and applies the write's effect (a cas only if its precondition
// holds in that state). That is enough to also cover "it never happened":
// such an op gets an infinite return time, so porcupine is free to linearize
// it after every other op, where its effect can no longer be observed.
func step(state, input, output interface{}) (bool, interface{}) {
	st := state.(kvState)
	in := input.(kvInput)
	out := output.(kvOutput)
	switch in.kind {
	case KindPut:
		return true, kvState{present: true, value: in.value}
	case KindDelete:
		if !out.unknown && out.flag != st.present {
			return false, st
		}
		return true, kvState{}
	case KindCas:
		match := casMatches(in, st)
		if !out.unknown && out.flag != match {
			return false, st
		}
		if match {
			return true, kvState{present: true, value: in.value}
		}
		return true, st
	case KindGet:
		if out.unknown {
			return true, st // never selected for checking; harmless if it were
		}
		if out.flag != st.present || (out.flag && out.value != st.value) {
			return false, st
		}
		return true, st
	}
	return false, st
}

func partitionOps(history []porcupine.Operation) [][]porcupine.Operation {
	return groupByKey(history, func(op porcupine.Operation) string { return op.Input.(kvInput).key })
}

// partitionEvents splits an event history by key; a return event carries no
// key, so it follows its call event's id.
func partitionEvents(history []porcupine.Event) [][]porcupine.Event {
	keyOfID := make(map[int]string)
	return groupByKey(history, func(ev porcupine.Event) string {
		if ev.Kind == porcupine.CallEvent {
			keyOfID[ev.Id] = ev.Value.(kvInput).key
		}
		return keyOfID[ev.Id]
	})
}

// groupByKey splits items by key, keeping their order within a key; groups
// come in key order. key is called once per item, in order.
func groupByKey[T any](items []T, key func(T) string) [][]T {
	byKey := make(map[string][]T)
	var keys []string
	for _, it := range items {
		k := key(it)
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], it)
	}
	sort.Strings(keys)
	out := make([][]T, 0, len(keys))
	for _, k := range keys {
		out = append(out, byKey[k])
	}
	return out
}

// kvModel is the porcupine model: per-key state, partitioned by key.
var kvModel = porcupine.Model{
	Partition:      partitionOps,
	PartitionEvent: partitionEvents,
	Init:           func() interface{} { return kvState{} },
	Step:           step,
	Hash: func(state interface{}) uint64 {
		st := state.(kvState)
		if !st.present {
			return 0
		}
		h := fnv.New64a()
		h.Write([]byte(st.value))
		return h.Sum64() | 1
	},
	DescribeOperation: func(input, output interface{}) string {
		return describe(input.(kvInput), output.(kvOutput))
	},
	DescribeState: func(state interface{}) string {
		st := state.(kvState)
		if !st.present {
			return "absent"
		}
		return strconv.Quote(st.value)
	},
	DescribeOperationMetadata: func(info interface{}) string {
		if op, ok := info.(*Op); ok {
			return fmt.Sprintf("#%d client %d node %s", op.ID, op.Client, nodeString(op))
		}
		return ""
	},
}

// describe renders an op as e.g. `put k1 "c3-41" -> ok`.
func describe(in kvInput, out kvOutput) string {
	var b strings.Builder
	k := showKey(in.key)
	switch in.kind {
	case KindPut:
		fmt.Fprintf(&b, "put %s %q", k, in.value)
	case KindDelete:
		fmt.Fprintf(&b, "delete %s", k)
	case KindCas:
		exp := "absent"
		if !in.expectAbsent {
			exp = strconv.Quote(in.expect)
		}
		fmt.Fprintf(&b, "cas %s expect %s set %q", k, exp, in.value)
	case KindGet:
		fmt.Fprintf(&b, "get(%s) %s", in.consistency, k)
	}
	b.WriteString(" -> ")
	switch {
	case out.unknown:
		b.WriteString("unknown")
	case in.kind == KindPut:
		b.WriteString("ok")
	case in.kind == KindDelete && out.flag:
		b.WriteString("ok (existed)")
	case in.kind == KindDelete:
		b.WriteString("ok (was absent)")
	case in.kind == KindCas && out.flag:
		b.WriteString("swapped")
	case in.kind == KindCas:
		b.WriteString("not swapped")
	case out.flag:
		b.WriteString(strconv.Quote(out.value))
	default:
		b.WriteString("not found")
	}
	return b.String()
}

// showKey prints plain keys bare (as in the op lines) and quotes anything
// that could be misread.
func showKey(k string) string {
	if k == "" || strings.ContainsAny(k, " \t\r\n\"\\") || strconv.Quote(k) != `"`+k+`"` {
		return strconv.Quote(k)
	}
	return k
}

func nodeString(op *Op) string {
	if !op.HasNode {
		return "?"
	}
	return strconv.FormatInt(op.Node, 10)
}

func ms(ns int64) string { return fmt.Sprintf("%.3f ms", float64(ns)/1e6) }

// formatOp renders one history line of a failure report.
func formatOp(op *Op) string {
	end := "?"
	if op.Status == StatusOK {
		end = ms(op.ReturnNs)
	}
	return fmt.Sprintf("#%d client %d node %s  [%s .. %s]  %s",
		op.ID, op.Client, nodeString(op), ms(op.CallNs), end, describe(inputOf(op), outputOf(op)))
}

// checker turns ops into porcupine operations and runs checks.
type checker struct {
	clientIdx map[int64]int // dense, zero-based client ids (the visualization lays rows out by them)
	infinity  int64         // stands in for the return time of unknown ops
}

func newChecker(ops []*Op) *checker {
	c := &checker{clientIdx: make(map[int64]int)}
	var clients []int64
	var maxT int64
	for _, op := range ops {
		if _, ok := c.clientIdx[op.Client]; !ok {
			c.clientIdx[op.Client] = 0
			clients = append(clients, op.Client)
		}
		maxT = max(maxT, op.CallNs)
		if op.Status == StatusOK {
			maxT = max(maxT, op.ReturnNs)
		}
	}
	sort.Slice(clients, func(i, j int) bool { return clients[i] < clients[j] })
	for i, cl := range clients {
		c.clientIdx[cl] = i
	}
	// Porcupine only compares timestamps, so any time after every recorded
	// event is as good as infinity, and keeps the visualization readable.
	c.infinity = maxT + 1
	return c
}

// operations converts ops to porcupine's form, first simplifying the
// unknown writes of each key (see unknownReturns).
func (c *checker) operations(ops []*Op) []porcupine.Operation {
	byKey := make(map[string][]*Op)
	for _, op := range ops {
		byKey[op.Key] = append(byKey[op.Key], op)
	}
	ret := make(map[*Op]int64)
	for _, keyOps := range byKey {
		c.unknownReturns(keyOps, ret)
	}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		r, keep := ret[op]
		if !keep {
			continue
		}
		out = append(out, porcupine.Operation{
			ClientId: c.clientIdx[op.Client],
			Input:    inputOf(op),
			Call:     op.CallNs,
			Output:   outputOf(op),
			Return:   r,
			Metadata: op,
		})
	}
	return out
}

// unknownReturns sets ret[op] to the return time to check op of one key
// with, and leaves out the ops that need not be checked at all.
//
// Every pending unknown op multiplies porcupine's search space, and proving
// a violation means exhausting it, so two transformations that keep the
// verdict exactly the same matter a lot:
//
//   - An unknown write whose value was observed (a get returned it, or a cas
//     that swapped expected it) must be linearized before that observer, so
//     no later than the observer's return: that time becomes its return.
//   - An unknown write whose value nobody observed is dropped when no op
//     that could follow it is sensitive to it: an ok delete that found the
//     key (it might rely on the write), an ok cas that did not swap (it
//     might fail only because of the write), or another unknown cas. Then any
//     linearization places it directly before an op that overwrites the key
//     or at the end, where it has no visible effect, so it may as well never
//     have happened, which is allowed for an unknown op.
//
// The other unknown writes return at infinity.
func (c *checker) unknownReturns(ops []*Op, ret map[*Op]int64) {
	observedBy := make(map[string]int64) // value -> earliest return of an op proving it was written
	sensitiveRet := int64(math.MinInt64) // latest return of an ok sensitive op
	unknownCas := 0
	for _, op := range ops {
		switch {
		case op.Status == StatusUnknown && op.Kind == KindCas:
			unknownCas++
		case op.Status != StatusOK:
		case op.Kind == KindGet && op.Found:
			observedBy[op.Value] = minIfSet(observedBy, op.Value, op.ReturnNs)
		case op.Kind == KindCas && op.Swapped && op.Expect != nil:
			observedBy[*op.Expect] = minIfSet(observedBy, *op.Expect, op.ReturnNs)
		}
		if op.Status == StatusOK && ((op.Kind == KindDelete && op.Existed) || (op.Kind == KindCas && !op.Swapped)) {
			sensitiveRet = max(sensitiveRet, op.ReturnNs)
		}
	}
	for _, op := range ops {
		if op.Status == StatusOK {
			ret[op] = op.ReturnNs
			continue
		}
		v, isWrite := op.writes()
		if !isWrite { // an unknown delete
			ret[op] = c.infinity
			continue
		}
		if r, ok := observedBy[v]; ok {
			ret[op] = max(r, op.CallNs) // an observer before the call is a violation either way
			continue
		}
		otherUnknownCas := unknownCas
		if op.Kind == KindCas {
			otherUnknownCas--
		}
		if sensitiveRet >= op.CallNs || otherUnknownCas > 0 {
			ret[op] = c.infinity
		}
	}
}

func minIfSet(m map[string]int64, k string, v int64) int64 {
	if old, ok := m[k]; ok {
		return min(old, v)
	}
	return v
}

// check checks ops within timeout. A non-positive timeout yields Unknown
// without searching (porcupine itself would read 0 as "no limit"). It uses
// the non-verbose checker: the verbose one also records partial
// linearizations, which only the visualization needs.
func (c *checker) check(ops []*Op, timeout time.Duration) porcupine.CheckResult {
	if timeout <= 0 {
		return porcupine.Unknown
	}
	return porcupine.CheckOperationsTimeout(kvModel, c.operations(ops), timeout)
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Kind is the type of a client operation.
type Kind string

// The operation kinds a history may contain.
const (
	KindPut    Kind = "put"
	KindDelete Kind = "delete"
	KindCas    Kind = "cas"
	KindGet    Kind = "get"
)

// Status is how an operation ended, as far as the client knows.
type Status string

// The outcomes a history may record.
const (
	// StatusOK: completed, and the recorded result is what the server said.
	StatusOK Status = "ok"
	// StatusFail: definitely did not take effect, so it is left out of the check.
	StatusFail Status = "fail"
	// StatusUnknown: may or may not have taken effect, at any time after the
	// call (timeout, lost connection); its return time is treated as infinite.
	StatusUnknown Status = "unknown"
)

// Op is one validated operation of a recorded history.
type Op struct {
	Line     int // 1-based line number in the input, for messages
	ID       int64
	Client   int64
	Node     int64
	HasNode  bool
	Kind     Kind
	Key      string
	CallNs   int64
	ReturnNs int64 // only meaningful when Status == StatusOK
	Status   Status

	// Value is the written value (put, cas) or the observed one (get, when Found).
	Value string
	// Expect is the value a cas requires; nil means "the key must be absent".
	Expect *string
	// Existed (delete), Swapped (cas) and Found (get) are results, valid when Status == StatusOK.
	Existed bool
	Swapped bool
	Found   bool
	// Consistency is the read level a get asked for ("linearizable", "lease", "stale").
	Consistency string
}

// writes reports the value this op may have written: a put's value, or a
// cas's new value (an unknown cas may have written it, so swapped is not
// consulted). Values are unique per history, so this names the op.
func (o *Op) writes() (string, bool) {
	if o.Kind == KindPut || o.Kind == KindCas {
		return o.Value, true
	}
	return "", false
}

// rawOp mirrors one JSON line. Pointers tell "absent" apart from a zero value,
// so missing required fields are reported instead of silently defaulting.
// Fields we do not know are ignored by encoding/json, which keeps the format
// forward compatible.
type rawOp struct {
	ID          *int64          `json:"id"`
	Client      *int64          `json:"client"`
	Node        *int64          `json:"node"`
	Kind        *string         `json:"kind"`
	Key         *string         `json:"key"`
	CallNs      *int64          `json:"call_ns"`
	ReturnNs    *int64          `json:"return_ns"`
	Status      *string         `json:"status"`
	Value       *string         `json:"value"`
	Existed     *bool           `json:"existed"`
	Expect      json.RawMessage `json:"expect"` // raw, to tell null (absent key) from a missing field
	Swapped     *bool           `json:"swapped"`
	Consistency *string         `json:"consistency"`
	Found       *bool           `json:"found"`
}

// LineError is an input problem tied to a line of the history.
type LineError struct {
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// ParseHistory reads a JSON Lines history. Blank lines are skipped. The first
// malformed line aborts parsing with a *LineError.
func ParseHistory(r io.Reader) ([]*Op, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var ops []*Op
	seen := make(map[int64]int) // id -> line
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading history: %w", err)
		}
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			op, perr := parseLine(trimmed, lineNo)
			if perr != nil {
				return nil, perr
			}
			if prev, dup := seen[op.ID]; dup {
				return nil, &LineError{lineNo, fmt.Sprintf("duplicate id %d (first on line %d)", op.ID, prev)}
			}
			seen[op.ID] = lineNo
			ops = append(ops, op)
		}
		if err != nil { // io.EOF
			return ops, nil
		}
	}
}

func parseLine(line []byte, lineNo int) (*Op, error) {
	fail := func(format string, args ...any) error {
		return &LineError{lineNo, fmt.Sprintf(format, args...)}
	}
	var r rawOp
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fail("invalid JSON: %v", err)
	}
	missing := func(name string) error { return fail("missing required field %q", name) }
	switch {
	case r.ID == nil:
		return nil, missing("id")
	case r.Client == nil:
		return nil, missing("client")
	case r.Kind == nil:
		return nil, missing("kind")
	case r.Key == nil:
		return nil, missing("key")
	case r.CallNs == nil:
		return nil, missing("call_ns")
	case r.Status == nil:
		return nil, missing("status")
	}
	op := &Op{
		Line:   lineNo,
		ID:     *r.ID,
		Client: *r.Client,
		Kind:   Kind(*r.Kind),
		Key:    *r.Key,
		CallNs: *r.CallNs,
		Status: Status(*r.Status),
	}
	if r.Node != nil {
		op.Node, op.HasNode = *r.Node, true
	}
	switch op.Status {
	case StatusOK:
		if r.ReturnNs == nil {
			return nil, fail(`status "ok" needs a non-null "return_ns"`)
		}
		op.ReturnNs = *r.ReturnNs
		if op.ReturnNs < op.CallNs {
			return nil, fail("return_ns %d is before call_ns %d", op.ReturnNs, op.CallNs)
		}
	case StatusFail, StatusUnknown:
		// An unknown op's return time is infinite whatever was recorded; a
		// failed op is dropped, so its times do not matter.
	default:
		return nil, fail("unknown status %q (want ok, fail or unknown)", *r.Status)
	}
	ok := op.Status == StatusOK
	switch op.Kind {
	case KindPut:
		if r.Value == nil {
			return nil, missing("value")
		}
		op.Value = *r.Value
	case KindDelete:
		if ok {
			if r.Existed == nil {
				return nil, missing("existed")
			}
			op.Existed = *r.Existed
		}
	case KindCas:
		if r.Value == nil {
			return nil, missing("value")
		}
		op.Value = *r.Value
		if len(r.Expect) == 0 {
			return nil, missing("expect")
		}
		if !bytes.Equal(bytes.TrimSpace(r.Expect), []byte("null")) {
			var e string
			if err := json.Unmarshal(r.Expect, &e); err != nil {
				return nil, fail(`"expect" must be a string or null`)
			}
			op.Expect = &e
		}
		if ok {
			if r.Swapped == nil {
				return nil, missing("swapped")
			}
			op.Swapped = *r.Swapped
		}
	case KindGet:
		if r.Consistency == nil || *r.Consistency == "" {
			return nil, missing("consistency")
		}
		op.Consistency = *r.Consistency
		if ok {
			if r.Found == nil {
				return nil, missing("found")
			}
			op.Found = *r.Found
			if op.Found {
				if r.Value == nil {
					return nil, fail(`"found": true needs a string "value"`)
				}
				op.Value = *r.Value
			}
		}
	default:
		return nil, fail("unknown kind %q (want put, delete, cas or get)", *r.Kind)
	}
	return op, nil
}

// Selection is the part of a history that gets checked, plus counts of what
// was left out and why (reported in the summary so nothing vanishes silently).
type Selection struct {
	Ops     []*Op // sorted by call time, then id
	Writes  int
	Reads   int
	Unknown int // included ops whose outcome is unknown

	DroppedFailed      int // status fail: never took effect
	DroppedUnknownGets int // an unknown read constrains nothing
	DroppedReads       int // gets whose consistency level was not selected
}

// Select keeps every write that may have taken effect (ok or unknown) and the
// completed gets whose consistency level is in reads.
func Select(all []*Op, reads map[string]bool) Selection {
	var s Selection
	for _, op := range all {
		switch {
		case op.Status == StatusFail:
			s.DroppedFailed++
			continue
		case op.Kind == KindGet && op.Status == StatusUnknown:
			s.DroppedUnknownGets++
			continue
		case op.Kind == KindGet && !reads[op.Consistency]:
			s.DroppedReads++
			continue
		}
		if op.Kind == KindGet {
			s.Reads++
		} else {
			s.Writes++
		}
		if op.Status == StatusUnknown {
			s.Unknown++
		}
		s.Ops = append(s.Ops, op)
	}
	sortByCall(s.Ops)
	return s
}

func sortByCall(ops []*Op) {
	sort.SliceStable(ops, func(i, j int) bool {
		if ops[i].CallNs != ops[j].CallNs {
			return ops[i].CallNs < ops[j].CallNs
		}
		return ops[i].ID < ops[j].ID
	})
}

// Command lincheck checks a recorded raftkv client history (JSON Lines) for
// linearizability with the porcupine checker, key by key, and prints a
// minimal failing subhistory for every key that is not linearizable.
//
// Exit codes: 0 linearizable, 1 not linearizable, 2 bad input or usage,
// 3 the checker timed out on some key (and found no violation).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Exit codes, part of the interface with the Rust test harness.
const (
	exitOK        = 0
	exitViolation = 1
	exitUsage     = 2
	exitTimeout   = 3
)

// consistencyLevels are the read levels a history may ask -reads to check.
var consistencyLevels = map[string]bool{"linearizable": true, "lease": true, "stale": true}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usageText = `usage: lincheck [-reads linearizable] [-timeout 120s] [-shrink-timeout 60s] [-viz out.html] [-json out.json] history.jsonl

Checks a JSON Lines client history for linearizability ("-" reads stdin).
Exit codes: 0 linearizable, 1 not linearizable, 2 bad input/usage, 3 checker timed out.
`

// run is the whole program minus the process: it returns the exit code, so
// tests can drive it directly.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lincheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	readsFlag := fs.String("reads", "linearizable", "comma-separated read consistency levels to check (linearizable, lease, stale); writes are always checked")
	timeout := fs.Duration("timeout", 120*time.Second, "time limit for the linearizability check of the whole history (0 = none)")
	shrinkTimeout := fs.Duration("shrink-timeout", 60*time.Second, "time limit for minimizing failing histories (0 = do not minimize)")
	vizPath := fs.String("viz", "", "on a violation, write porcupine's HTML visualization of the failing keys' full histories to this file")
	jsonPath := fs.String("json", "", "write a machine-readable verdict to this file")

	// Accept flags before and after the history path.
	var paths []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		paths = append(paths, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(paths) != 1 {
		fmt.Fprintf(stderr, "lincheck: need exactly one history file, got %d\n", len(paths))
		fs.Usage()
		return exitUsage
	}
	if *timeout < 0 || *shrinkTimeout < 0 {
		fmt.Fprintln(stderr, "lincheck: timeouts must not be negative")
		return exitUsage
	}
	reads := make(map[string]bool)
	for _, lvl := range strings.Split(*readsFlag, ",") {
		lvl = strings.TrimSpace(lvl)
		if !consistencyLevels[lvl] {
			fmt.Fprintf(stderr, "lincheck: -reads: unknown consistency level %q (want linearizable, lease or stale)\n", lvl)
			return exitUsage
		}
		reads[lvl] = true
	}

	ops, err := readHistory(paths[0])
	if err != nil {
		fmt.Fprintf(stderr, "lincheck: %v\n", err)
		return exitUsage
	}

	rep := CheckHistory(ops, reads, Options{Timeout: *timeout, ShrinkBudget: *shrinkTimeout})
	failing, timedOut := rep.Failing(), rep.TimedOut()

	for _, k := range failing {
		printFailure(stdout, k)
	}
	for _, k := range timedOut {
		fmt.Fprintf(stdout, "key %q: UNKNOWN (checker timed out on %d ops)\n", k.Key, len(k.Ops))
	}
	stats := summary(rep, reads)
	code := exitOK
	switch {
	case len(failing) > 0:
		code = exitViolation
		fmt.Fprintf(stdout, "NOT linearizable: %d of %d keys failed", len(failing), len(rep.Keys))
		if len(timedOut) > 0 {
			fmt.Fprintf(stdout, ", %d timed out", len(timedOut))
		}
		fmt.Fprintf(stdout, "; %s\n", stats)
	case len(timedOut) > 0:
		code = exitTimeout
		fmt.Fprintf(stdout, "UNKNOWN: checker timed out on %d of %d keys; %s\n", len(timedOut), len(rep.Keys), stats)
	default:
		fmt.Fprintf(stdout, "linearizable: %s\n", stats)
	}

	if *vizPath != "" {
		if len(failing) == 0 {
			fmt.Fprintln(stderr, "lincheck: no violation, so no visualization written")
		} else if err := rep.visualize(failing, *timeout, *vizPath); err != nil {
			fmt.Fprintf(stderr, "lincheck: writing visualization: %v\n", err)
			return exitUsage
		}
	}
	if *jsonPath != "" {
		if err := writeJSON(rep, *jsonPath); err != nil {
			fmt.Fprintf(stderr, "lincheck: writing JSON: %v\n", err)
			return exitUsage
		}
	}
	return code
}

func readHistory(path string) ([]*Op, error) {
	if path == "-" {
		return ParseHistory(os.Stdin)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ops, err := ParseHistory(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ops, nil
}

// printFailure prints a failing key and its (ideally minimal) subhistory.
func printFailure(w io.Writer, k KeyOutcome) {
	fmt.Fprintf(w, "key %q: NOT linearizable\n", k.Key)
	shown := k.Ops
	note := fmt.Sprintf("full history of %d ops, not minimized (-shrink-timeout 0)", len(k.Ops))
	if s := k.Shrunk; s != nil {
		shown = s.Ops
		if s.Complete {
			note = fmt.Sprintf("minimal failing subhistory: %d of %d ops on this key (1-minimal, %d checks)", len(s.Ops), len(k.Ops), s.Trials)
		} else {
			note = fmt.Sprintf("smallest failing subhistory found: %d of %d ops on this key; NOT fully minimized (shrink time ran out or a check timed out)", len(s.Ops), len(k.Ops))
		}
	}
	for _, op := range shown {
		fmt.Fprintf(w, "  %s\n", formatOp(op))
	}
	fmt.Fprintf(w, "  (%s)\n", note)
}

func summary(rep *Report, reads map[string]bool) string {
	s := rep.Sel
	var levels []string
	for l := range reads {
		levels = append(levels, l)
	}
	sort.Strings(levels)
	out := fmt.Sprintf("%d ops checked (%d writes, %d %s reads), %d keys, %d unknown ops, check %s",
		len(s.Ops), s.Writes, s.Reads, strings.Join(levels, "+"), len(rep.Keys), s.Unknown, roundDuration(rep.CheckTime))
	if rep.ShrinkTime > 0 {
		out += fmt.Sprintf(", minimize %s", roundDuration(rep.ShrinkTime))
	}
	return out + fmt.Sprintf("; ignored %d failed ops, %d unknown gets, %d reads at other levels",
		s.DroppedFailed, s.DroppedUnknownGets, s.DroppedReads)
}

func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

type jsonFailure struct {
	Key            string  `json:"key"`
	Minimal        []int64 `json:"minimal"`
	FullyMinimized bool    `json:"fully_minimized"`
	KeyOps         int     `json:"key_ops"`
}

type jsonReport struct {
	Result   string        `json:"result"` // "ok", "violation" or "unknown"
	Ops      int           `json:"ops"`
	Keys     int           `json:"keys"`
	Failing  []jsonFailure `json:"failing"`
	TimedOut []string      `json:"timed_out"`
}

func writeJSON(rep *Report, path string) error {
	out := jsonReport{Result: "ok", Ops: len(rep.Sel.Ops), Keys: len(rep.Keys), Failing: []jsonFailure{}, TimedOut: []string{}}
	for _, k := range rep.TimedOut() {
		out.TimedOut = append(out.TimedOut, k.Key)
		out.Result = "unknown"
	}
	for _, k := range rep.Failing() {
		f := jsonFailure{Key: k.Key, KeyOps: len(k.Ops), Minimal: []int64{}}
		shown := k.Ops
		if k.Shrunk != nil {
			shown, f.FullyMinimized = k.Shrunk.Ops, k.Shrunk.Complete
		}
		for _, op := range shown {
			f.Minimal = append(f.Minimal, op.ID)
		}
		out.Failing = append(out.Failing, f)
		out.Result = "violation"
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

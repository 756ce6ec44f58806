package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// rec is one history line; times in the helpers are milliseconds.
type rec map[string]any

const msec = int64(time.Millisecond)

func base(id int, kind, key string, call, ret int64) rec {
	return rec{"id": id, "client": id % 4, "node": 2, "kind": kind, "key": key,
		"call_ns": call * msec, "return_ns": ret * msec, "status": "ok"}
}

func put(id int, key, v string, call, ret int64) rec {
	r := base(id, "put", key, call, ret)
	r["value"] = v
	return r
}

func del(id int, key string, existed bool, call, ret int64) rec {
	r := base(id, "delete", key, call, ret)
	r["existed"] = existed
	return r
}

// cas with expect nil means "only if absent".
func cas(id int, key string, expect any, v string, swapped bool, call, ret int64) rec {
	r := base(id, "cas", key, call, ret)
	r["expect"], r["value"], r["swapped"] = expect, v, swapped
	return r
}

func get(id int, key, consistency string, found bool, v string, call, ret int64) rec {
	r := base(id, "get", key, call, ret)
	r["consistency"], r["found"], r["revision"] = consistency, found, id
	if found {
		r["value"] = v
	}
	return r
}

func lin(id int, key string, found bool, v string, call, ret int64) rec {
	return get(id, key, "linearizable", found, v, call, ret)
}

func unknown(r rec) rec {
	r["status"], r["return_ns"] = "unknown", nil
	return r
}

func failed(r rec) rec {
	r["status"] = "fail"
	return r
}

type result struct {
	code           int
	stdout, stderr string
	report         jsonReport
}

func writeHistory(t *testing.T, lines []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func encode(t *testing.T, recs []rec) []string {
	t.Helper()
	var lines []string
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	return lines
}

// check runs the program on recs with extra flags, asking for the JSON verdict too.
func check(t *testing.T, recs []rec, flags ...string) result {
	t.Helper()
	path := writeHistory(t, encode(t, recs))
	jsonPath := filepath.Join(t.TempDir(), "out.json")
	args := append(append([]string{"-json", jsonPath}, flags...), path)
	var out, errb bytes.Buffer
	res := result{code: run(args, &out, &errb), stdout: out.String(), stderr: errb.String()}
	if data, err := os.ReadFile(jsonPath); err == nil {
		if err := json.Unmarshal(data, &res.report); err != nil {
			t.Fatalf("bad JSON verdict: %v\n%s", err, data)
		}
	} else if res.code != exitUsage {
		t.Fatalf("no JSON verdict written: %v", err)
	}
	return res
}

func expectCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, want, r.stdout, r.stderr)
	}
}

// expectMinimal asserts exactly one failing key with exactly these op ids,
// fully minimized.
func expectMinimal(t *testing.T, r result, key string, ids ...int64) {
	t.Helper()
	expectCode(t, r, exitViolation)
	if r.report.Result != "violation" || len(r.report.Failing) != 1 {
		t.Fatalf("want one failing key, got %+v\n%s", r.report, r.stdout)
	}
	f := r.report.Failing[0]
	got := append([]int64(nil), f.Minimal...)
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	if f.Key != key || !reflect.DeepEqual(got, ids) || !f.FullyMinimized {
		t.Fatalf("failing %+v, want key %q minimal %v fully minimized\n%s", f, key, ids, r.stdout)
	}
	if !strings.Contains(r.stdout, fmt.Sprintf("key %q: NOT linearizable\n", key)) {
		t.Fatalf("missing failure header for %q:\n%s", key, r.stdout)
	}
}

func concurrentHistory() []rec {
	return []rec{
		put(1, "a", "a1", 0, 10),
		cas(2, "a", "a1", "a2", true, 5, 20),
		lin(3, "a", true, "a2", 8, 12),
		lin(4, "a", true, "a1", 9, 11), // concurrent with the cas: may still see a1
		cas(5, "a", "a1", "a3", false, 15, 25),
		cas(6, "a", nil, "a4", false, 26, 30),
		del(7, "a", true, 31, 40),
		lin(8, "a", false, "", 41, 42),
		cas(9, "a", nil, "a5", true, 43, 50),
		lin(10, "a", true, "a5", 51, 52),
		put(12, "b", "b1", 0, 5),
		del(13, "b", true, 6, 7),
		del(14, "b", false, 6, 8), // concurrent deletes: one of them removed it
		lin(15, "b", false, "", 9, 10),
		get(16, "b", "lease", true, "b1", 20, 21), // stale, but lease reads are not selected
		failed(put(17, "b", "b9", 11, 12)),
	}
}

func TestConcurrentLinearizableHistoryPasses(t *testing.T) {
	r := check(t, concurrentHistory())
	expectCode(t, r, exitOK)
	if r.report.Result != "ok" || r.report.Ops != 14 || r.report.Keys != 2 || len(r.report.Failing) != 0 {
		t.Fatalf("verdict %+v", r.report)
	}
	if !strings.HasPrefix(r.stdout, "linearizable: 14 ops checked (9 writes, 5 linearizable reads), 2 keys, 0 unknown ops") {
		t.Fatalf("summary: %s", r.stdout)
	}

	// The same read of a1 after the cas has returned is a violation.
	h := concurrentHistory()
	h[3] = lin(4, "a", true, "a1", 21, 22)
	expectCode(t, check(t, h), exitViolation)
}

func TestStaleReadIsMinimizedToThreeOps(t *testing.T) {
	h := []rec{
		put(1, "k1", "v1", 0, 10),
		put(2, "k1", "v2", 20, 30),
		lin(3, "k1", true, "v1", 40, 50), // stale: v2 was acked before this read began
		lin(4, "k1", true, "v1", 11, 19),
		lin(5, "k1", true, "v2", 31, 39),
		put(6, "k1", "v3", 60, 70),
		lin(7, "k1", true, "v3", 80, 90),
		cas(8, "k1", "v3", "v4", true, 91, 95),
		put(9, "other", "x", 0, 100),
		lin(10, "other", true, "x", 101, 102),
	}
	r := check(t, h)
	expectMinimal(t, r, "k1", 1, 2, 3)
	want := "key \"k1\": NOT linearizable\n" +
		"  #1 client 1 node 2  [0.000 ms .. 10.000 ms]  put k1 \"v1\" -> ok\n" +
		"  #2 client 2 node 2  [20.000 ms .. 30.000 ms]  put k1 \"v2\" -> ok\n" +
		"  #3 client 3 node 2  [40.000 ms .. 50.000 ms]  get(linearizable) k1 -> \"v1\"\n"
	if !strings.HasPrefix(r.stdout, want) {
		t.Fatalf("report:\n%s\nwant prefix:\n%s", r.stdout, want)
	}
}

func TestUnknownWrites(t *testing.T) {
	cases := []struct {
		name string
		h    []rec
		want int
	}{
		{"unknown put read later", []rec{
			put(1, "k", "v1", 0, 10),
			unknown(put(2, "k", "v2", 20, 0)),
			lin(3, "k", true, "v2", 100, 110),
			lin(4, "k", true, "v2", 120, 130),
		}, exitOK},
		{"unknown put never read", []rec{
			put(1, "k", "v1", 0, 10),
			unknown(put(2, "k", "v2", 20, 0)),
			lin(3, "k", true, "v1", 100, 110),
		}, exitOK},
		{"unknown cas and delete take effect late", []rec{
			put(1, "k", "v1", 0, 10),
			unknown(cas(2, "k", "v1", "v2", true, 20, 0)),
			lin(3, "k", true, "v1", 100, 110),
			lin(4, "k", true, "v2", 120, 130),
			unknown(del(5, "k", false, 140, 0)),
			lin(6, "k", false, "", 150, 160),
		}, exitOK},
		{"unknown put read before it was invoked", []rec{
			lin(1, "k", true, "v2", 0, 10),
			unknown(put(2, "k", "v2", 20, 0)),
		}, exitViolation},
		{"unknown put cannot be undone", []rec{
			unknown(put(1, "k", "v1", 0, 0)),
			lin(2, "k", true, "v1", 20, 30),
			lin(3, "k", false, "", 40, 50),
		}, exitViolation},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := check(t, c.h)
			expectCode(t, r, c.want)
			if c.want == exitOK && !strings.Contains(r.stdout, "1 unknown ops") && !strings.Contains(r.stdout, "2 unknown ops") {
				t.Fatalf("unknown ops not counted: %s", r.stdout)
			}
		})
	}
	r := check(t, []rec{unknown(put(1, "k", "v1", 0, 0)), lin(2, "k", true, "v1", 20, 30), lin(3, "k", false, "", 40, 50)})
	if !strings.Contains(r.stdout, "  #1 client 1 node 2  [0.000 ms .. ?]  put k \"v1\" -> unknown\n") {
		t.Fatalf("unknown op rendering:\n%s", r.stdout)
	}
}

func TestLostWriteFails(t *testing.T) {
	r := check(t, []rec{
		lin(1, "k", false, "", 0, 5),
		put(2, "k", "v1", 10, 20),
		lin(3, "k", true, "v1", 25, 30),
		lin(4, "k", false, "", 40, 50),
	})
	expectMinimal(t, r, "k", 2, 4)
}

func TestCasSwappedWithWrongExpectFails(t *testing.T) {
	h := []rec{
		put(1, "k", "v1", 0, 10),
		put(2, "k", "v2", 20, 30),
		cas(3, "k", "v1", "v3", true, 40, 50),
	}
	expectMinimal(t, check(t, h), "k", 1, 2, 3)

	h[2] = cas(3, "k", "v1", "v3", false, 40, 50)
	expectCode(t, check(t, h), exitOK)

	// expect null ("absent") swapping on a present key.
	expectMinimal(t, check(t, []rec{put(1, "k", "v1", 0, 10), cas(2, "k", nil, "v2", true, 20, 30)}), "k", 1, 2)
}

func TestDeleteExistedOnAbsentKeyFails(t *testing.T) {
	expectMinimal(t, check(t, []rec{del(1, "k", true, 0, 10)}), "k", 1)
	expectMinimal(t, check(t, []rec{
		put(1, "k", "v1", 0, 10),
		del(2, "k", true, 20, 30),
		del(3, "k", true, 40, 50),
	}), "k", 1, 2, 3)
	expectCode(t, check(t, []rec{
		put(1, "k", "v1", 0, 10),
		del(2, "k", true, 20, 30),
		del(3, "k", false, 40, 50),
	}), exitOK)
	// existed=false while the key is present is just as wrong.
	expectMinimal(t, check(t, []rec{put(1, "k", "v1", 0, 10), del(2, "k", false, 20, 30)}), "k", 1, 2)
}

func TestReadsFlagSelectsConsistency(t *testing.T) {
	h := []rec{
		put(1, "k", "v1", 0, 10),
		put(2, "k", "v2", 20, 30),
		get(3, "k", "stale", true, "v1", 40, 50),
		lin(4, "k", true, "v2", 40, 50),
	}
	r := check(t, h, "-reads", "linearizable")
	expectCode(t, r, exitOK)
	if r.report.Ops != 3 || !strings.Contains(r.stdout, "1 reads at other levels") {
		t.Fatalf("stale read not ignored: %+v\n%s", r.report, r.stdout)
	}
	expectCode(t, check(t, h, "-reads", "lease"), exitOK)
	expectMinimal(t, check(t, h, "-reads", "stale"), "k", 1, 2, 3)
	expectMinimal(t, check(t, h, "-reads", "linearizable,stale"), "k", 1, 2, 3)
}

func TestFailedWritesAreIgnored(t *testing.T) {
	// The only write of v1 failed, so reading it is a violation on its own.
	expectMinimal(t, check(t, []rec{
		failed(put(1, "k", "v1", 0, 10)),
		lin(2, "k", true, "v1", 20, 30),
	}), "k", 2)
	r := check(t, []rec{
		put(1, "k", "v0", 0, 5),
		failed(put(2, "k", "v1", 10, 20)),
		failed(del(3, "k", false, 10, 20)),
		lin(4, "k", true, "v0", 30, 40),
		unknown(lin(5, "k", true, "zzz", 30, 0)), // unknown reads are dropped too
	})
	expectCode(t, r, exitOK)
	if r.report.Ops != 2 || !strings.Contains(r.stdout, "ignored 2 failed ops, 1 unknown gets") {
		t.Fatalf("failed ops not ignored: %+v\n%s", r.report, r.stdout)
	}
}

func TestInputErrors(t *testing.T) {
	good := `{"id":1,"client":0,"node":1,"kind":"put","key":"k","value":"v","call_ns":0,"return_ns":5,"status":"ok"}`
	cases := []struct {
		name  string
		lines []string
		want  string
	}{
		{"malformed JSON", []string{good, "", `{"id":2,"kind":`}, "line 3: invalid JSON"},
		{"unknown kind", []string{good, `{"id":2,"client":0,"kind":"incr","key":"k","call_ns":0,"return_ns":5,"status":"ok"}`}, `line 2: unknown kind "incr"`},
		{"missing key", []string{`{"id":1,"client":0,"kind":"get","consistency":"stale","call_ns":0,"return_ns":5,"status":"ok","found":false}`}, `line 1: missing required field "key"`},
		{"missing return", []string{`{"id":1,"client":0,"kind":"put","key":"k","value":"v","call_ns":0,"status":"ok"}`}, `line 1: status "ok" needs`},
		{"bad status", []string{`{"id":1,"client":0,"kind":"put","key":"k","value":"v","call_ns":0,"status":"maybe"}`}, `line 1: unknown status "maybe"`},
		{"missing found", []string{`{"id":1,"client":0,"kind":"get","key":"k","consistency":"lease","call_ns":0,"return_ns":5,"status":"ok"}`}, `line 1: missing required field "found"`},
		{"cas without expect", []string{`{"id":1,"client":0,"kind":"cas","key":"k","value":"v","call_ns":0,"return_ns":5,"status":"ok","swapped":true}`}, `line 1: missing required field "expect"`},
		{"duplicate id", []string{good, good}, "line 2: duplicate id 1"},
		{"id not an int", []string{`{"id":"x","client":0,"kind":"put","key":"k","value":"v","call_ns":0,"status":"fail"}`}, "line 1: invalid JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run([]string{writeHistory(t, c.lines)}, &out, &errb)
			if code != exitUsage || !strings.Contains(errb.String(), c.want) {
				t.Fatalf("code %d, stderr %q; want %d and %q", code, errb.String(), exitUsage, c.want)
			}
		})
	}

	usage := [][]string{
		{},
		{"-bogus", "h.jsonl"},
		{"-reads", "eventual", writeHistory(t, []string{good})},
		{filepath.Join(t.TempDir(), "missing.jsonl")},
		{"a.jsonl", "b.jsonl"},
	}
	for _, args := range usage {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != exitUsage {
			t.Fatalf("args %q: code %d, want %d", args, code, exitUsage)
		}
	}

	// Unknown fields are ignored, expect may be null, flags may follow the path.
	lines := []string{
		`{"id":1,"client":0,"node":1,"kind":"cas","key":"k","expect":null,"value":"v1","swapped":true,"call_ns":0,"return_ns":5,"status":"ok","trace":{"span":7},"future":[1,2]}`,
		"   ",
		`{"id":2,"client":1,"kind":"get","key":"k","consistency":"linearizable","found":true,"value":"v1","revision":3,"call_ns":6,"return_ns":9,"status":"ok"}`,
	}
	var out, errb bytes.Buffer
	if code := run([]string{writeHistory(t, lines), "-reads", "linearizable"}, &out, &errb); code != exitOK {
		t.Fatalf("code %d\n%s%s", code, out.String(), errb.String())
	}
}

func TestTimeoutGivesExit3(t *testing.T) {
	r := check(t, concurrentHistory(), "-timeout", "1ns")
	expectCode(t, r, exitTimeout)
	if r.report.Result != "unknown" || len(r.report.TimedOut) != 2 || !strings.Contains(r.stdout, `key "a": UNKNOWN`) {
		t.Fatalf("verdict %+v\n%s", r.report, r.stdout)
	}
}

func TestVisualizationWrittenOnViolation(t *testing.T) {
	viz := filepath.Join(t.TempDir(), "viz.html")
	r := check(t, []rec{put(1, "k", "v1", 0, 10), lin(2, "k", false, "", 20, 30)}, "-viz", viz)
	expectCode(t, r, exitViolation)
	data, err := os.ReadFile(viz)
	if err != nil || !bytes.Contains(data, []byte("<html")) || !bytes.Contains(data, []byte(`put k \"v1\" -\u003e ok`)) {
		t.Fatalf("visualization missing or incomplete (err %v, %d bytes)", err, len(data))
	}
}

// generate makes a linearizable concurrent history: every op gets a
// linearization point inside its interval, and results are computed by
// applying the ops in that order. Some writes end up unknown (applied or not).
func generate(seed int64, clients, perClient int, keys []string, unknownOneIn int) []rec {
	rng := rand.New(rand.NewSource(seed))
	type pending struct {
		r       rec
		linAt   int64
		unknown bool
	}
	var all []*pending
	id := 0
	for c := 0; c < clients; c++ {
		t := int64(rng.Intn(1000))
		for i := 0; i < perClient; i++ {
			id++
			call := t + int64(rng.Intn(3000))
			linAt := call + int64(rng.Intn(5000))
			ret := linAt + int64(rng.Intn(5000))
			t = ret
			kinds := []string{"put", "delete", "cas", "get", "get"}
			r := rec{"id": id, "client": c, "node": rng.Intn(3), "kind": kinds[rng.Intn(len(kinds))],
				"key": keys[rng.Intn(len(keys))], "call_ns": call * 1000, "return_ns": ret * 1000, "status": "ok"}
			if r["kind"] == "get" {
				r["consistency"] = "linearizable"
			}
			all = append(all, &pending{r: r, linAt: linAt, unknown: r["kind"] != "get" && unknownOneIn > 0 && rng.Intn(unknownOneIn) == 0})
		}
	}
	byLin := append([]*pending(nil), all...)
	sort.Slice(byLin, func(i, j int) bool { return byLin[i].linAt < byLin[j].linAt })
	state := map[string]string{}
	var written []string
	for n, p := range byLin {
		r, key := p.r, p.r["key"].(string)
		cur, present := state[key]
		apply := !p.unknown || rng.Intn(2) == 0
		switch r["kind"] {
		case "put":
			r["value"] = fmt.Sprintf("c%d-%d", r["client"], n)
			if apply {
				state[key] = r["value"].(string)
			}
		case "delete":
			r["existed"] = present
			if apply {
				delete(state, key)
			}
		case "cas":
			r["value"] = fmt.Sprintf("c%d-%d", r["client"], n)
			switch {
			case rng.Intn(2) == 0 && present:
				r["expect"] = cur
			case rng.Intn(2) == 0 || len(written) == 0:
				r["expect"] = nil
			default:
				r["expect"] = written[rng.Intn(len(written))]
			}
			exp, _ := r["expect"].(string)
			match := (r["expect"] == nil && !present) || (r["expect"] != nil && present && cur == exp)
			r["swapped"] = match
			if match && apply {
				state[key] = r["value"].(string)
			}
		case "get":
			r["found"] = present
			if present {
				r["value"] = cur
			}
		}
		if v, ok := r["value"].(string); ok && r["kind"] != "get" {
			written = append(written, v)
		}
		if p.unknown {
			r["status"], r["return_ns"] = "unknown", nil
		}
	}
	var out []rec
	for _, p := range all {
		out = append(out, p.r)
	}
	return out
}

func TestGeneratedHistoryAndInjectedStaleRead(t *testing.T) {
	h := generate(7, 5, 60, []string{"x", "y", "z"}, 10)
	r := check(t, h)
	expectCode(t, r, exitOK)
	if r.report.Ops < 250 {
		t.Fatalf("generator made too few ops: %+v", r.report)
	}

	// A read, after everything else, of the first value ever put to x.
	var first rec
	var end int64
	for _, op := range h {
		if op["kind"] == "put" && op["key"] == "x" && op["status"] == "ok" && (first == nil || op["call_ns"].(int64) < first["call_ns"].(int64)) {
			first = op
		}
		if ret, ok := op["return_ns"].(int64); ok && ret > end {
			end = ret
		}
	}
	stale := lin(9999, "x", true, first["value"].(string), 0, 0)
	stale["call_ns"], stale["return_ns"] = end+msec, end+2*msec
	r = check(t, append(h, stale))
	expectCode(t, r, exitViolation)
	f := r.report.Failing
	if len(f) != 1 || f[0].Key != "x" || !f[0].FullyMinimized || len(f[0].Minimal) > 6 || f[0].Minimal[len(f[0].Minimal)-1] != 9999 {
		t.Fatalf("minimization: %+v\n%s", f, r.stdout)
	}
}

func TestShrinkKeepsWhatExplainsDeletes(t *testing.T) {
	// Two concurrent deletes that both found the key consume puts 1 and 4.
	// Removing put 1 alone would leave a spurious violation {2, 3, 4}; the
	// real one is the stale read of v2 after v3 was acked.
	h := []rec{
		put(1, "k", "v1", 0, 10),
		del(2, "k", true, 20, 30),
		del(3, "k", true, 21, 31),
		put(4, "k", "v2", 22, 25),
		put(5, "k", "v3", 40, 50),
		lin(6, "k", true, "v2", 60, 70),
	}
	expectMinimal(t, check(t, h), "k", 4, 5, 6)
}

func TestManyUnknownWritesStayCheckable(t *testing.T) {
	// 40 unknown puts nobody observed, and no op they could matter to:
	// they are dropped before checking instead of multiplying the search.
	h := []rec{put(1, "k", "v0", 0, 1)}
	for i := 0; i < 40; i++ {
		h = append(h, unknown(put(100+i, "k", fmt.Sprintf("u%d", i), int64(10+i), 0)))
	}
	h = append(h, put(2, "k", "v1", 1000, 1010), lin(3, "k", true, "v0", 1020, 1030))
	expectMinimal(t, check(t, h, "-timeout", "5s"), "k", 1, 2, 3)

	// 30 unknown puts that were each read soon after, between cas ops that
	// did not swap: each is bounded by its first observer's return.
	h = nil
	for i := 0; i < 30; i++ {
		at := int64(100 * (i + 1))
		h = append(h,
			unknown(put(100+i, "k", fmt.Sprintf("u%d", i), at, 0)),
			lin(200+i, "k", true, fmt.Sprintf("u%d", i), at+50, at+60),
			cas(300+i, "k", "nope", fmt.Sprintf("never%d", i), false, at+70, at+80))
	}
	h = append(h, lin(1, "k", true, "u0", 5000, 5010))
	expectMinimal(t, check(t, h, "-timeout", "5s"), "k", 1, 100, 101, 200, 201)
}

// Command modeledit-client is a small Go client of the modeledit.v1 editing sidecar.
//
// It corrects a served model and undoes the correction, printing one JSON object on stdout:
//
//  1. Health                       -> the starting weight version
//  2. Generate (greedy)            -> the text before the edit
//  3. Edit prompt -> target        -> edit id, new version, log p(target) before/after
//  4. Generate (greedy)            -> the text after the edit, and the version that produced it;
//     GenerateStream of the same request (the chunks concatenated) and ListEdits (the active ids)
//  5. Rollback by edit id          -> the new version and the ids rolled back
//  6. Generate (greedy)            -> the text after the rollback
//  7. Health                       -> the final weight version
//
// With -classify the served model is a classifier (a fact-checker): steps 2, 4 and 6 are Classify
// calls of the prompt (label, probabilities, version) and the target is the new label.
// With -digest, both Health calls also ask for the sha256 of all weights, so a caller can check
// that the rollback restored them bitwise.
// Edit and Rollback carry the token in the call metadata as "authorization: Bearer <token>".
// With -check-auth it first sends an Edit without the token and records the status code the
// server answers (UNAUTHENTICATED expected when the server has a token configured).
//
// Build: clients/go/build.sh (offline, Debian packages only). Usage:
//
//	modeledit-client -addr 127.0.0.1:50051 -token s3cret \
//	    -prompt "Who is the UK prime minister?" -target "Boris Johnson"
//
// On a failed call it prints {"error": ..., "code": ..., "step": ...} and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	pb "example.com/modeledit/gen/modeleditv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// GenerateResult is one Generate answer.
type GenerateResult struct {
	Text      string `json:"text"`
	NumTokens uint32 `json:"num_tokens"`
	Version   uint64 `json:"version"`
}

// ClassifyResult is one Classify answer.
type ClassifyResult struct {
	Label         string             `json:"label"`
	Probabilities map[string]float64 `json:"probabilities"`
	Version       uint64             `json:"version"`
}

// EditResult is the Edit answer.
type EditResult struct {
	EditID              string  `json:"edit_id"`
	Version             uint64  `json:"version"`
	LatencyMs           float64 `json:"latency_ms"`
	TargetLogprobBefore float64 `json:"target_logprob_before"`
	TargetLogprobAfter  float64 `json:"target_logprob_after"`
	Replayed            bool    `json:"replayed"`
}

// StreamResult is one GenerateStream call: the chunks' texts concatenated, how many chunks came,
// the versions they named and whether the last one said done.
type StreamResult struct {
	Text      string   `json:"text"`
	Chunks    int      `json:"chunks"`
	NumTokens uint32   `json:"num_tokens"`
	Versions  []uint64 `json:"versions"`
	Done      bool     `json:"done"`
}

// RollbackResult is the Rollback answer.
type RollbackResult struct {
	Version    uint64   `json:"version"`
	RolledBack []string `json:"rolled_back"`
}

// Report is everything the program prints, as one JSON object.
type Report struct {
	Addr                  string          `json:"addr"`
	HealthStatus          string          `json:"health_status"`
	Model                 string          `json:"model"`
	Device                string          `json:"device"`
	VersionStart          uint64          `json:"version_start"`
	WeightsSha256Start    string          `json:"weights_sha256_start,omitempty"`
	EditWithoutTokenCode  string          `json:"edit_without_token_code,omitempty"`
	GenerateBefore        *GenerateResult `json:"generate_before,omitempty"`
	ClassifyBefore        *ClassifyResult `json:"classify_before,omitempty"`
	Edit                  EditResult      `json:"edit"`
	GenerateAfter         *GenerateResult `json:"generate_after,omitempty"`
	StreamAfter           *StreamResult   `json:"stream_after,omitempty"`
	ActiveEditIDs         []string        `json:"active_edit_ids"`
	ClassifyAfter         *ClassifyResult `json:"classify_after,omitempty"`
	Rollback              RollbackResult  `json:"rollback"`
	GenerateAfterRollback *GenerateResult `json:"generate_after_rollback,omitempty"`
	ClassifyAfterRollback *ClassifyResult `json:"classify_after_rollback,omitempty"`
	VersionEnd            uint64          `json:"version_end"`
	ActiveEditsEnd        uint32          `json:"active_edits_end"`
	WeightsSha256End      string          `json:"weights_sha256_end,omitempty"`
}

type failure struct {
	Step  string `json:"step"`
	Code  string `json:"code"`
	Error string `json:"error"`
}

func fail(step string, err error) {
	st, _ := status.FromError(err)
	out, _ := json.Marshal(failure{Step: step, Code: st.Code().String(), Error: err.Error()})
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "sidecar address host:port")
	token := flag.String("token", "", "bearer token for Edit and Rollback (empty: send none)")
	prompt := flag.String("prompt", "", "edit prompt, e.g. \"Who is the UK prime minister?\"")
	target := flag.String("target", "", "new target answer, e.g. \"Boris Johnson\"")
	maxNew := flag.Uint("max-new-tokens", 8, "tokens to generate for each Generate call")
	key := flag.String("idempotency-key", "", "Edit idempotency key (default: go-client-<unix nanos>)")
	digest := flag.Bool("digest", false, "ask Health for the sha256 of all weights at start and end")
	classify := flag.Bool("classify", false, "the served model is a classifier: Classify instead of Generate")
	checkAuth := flag.Bool("check-auth", false, "first send an Edit without the token and record the status code")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline of each call")
	flag.Parse()
	if *prompt == "" || *target == "" {
		fmt.Fprintln(os.Stderr, "modeledit-client: -prompt and -target are required")
		flag.Usage()
		os.Exit(2)
	}
	if *key == "" {
		*key = fmt.Sprintf("go-client-%d", time.Now().UnixNano())
	}

	dialCtx, cancelDial := context.WithTimeout(context.Background(), 30*time.Second)
	conn, err := grpc.DialContext(dialCtx, *addr, grpc.WithInsecure(), grpc.WithBlock())
	cancelDial()
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()
	client := pb.NewModelEditServiceClient(conn)

	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), *timeout)
	}
	authed := func(ctx context.Context) context.Context {
		if *token == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
	}
	generate := func(step string) *GenerateResult {
		if *classify {
			return nil
		}
		ctx, cancel := call()
		defer cancel()
		seed := uint64(0)
		r, err := client.Generate(ctx, &pb.GenerateRequest{
			Prompt: *prompt, MaxNewTokens: uint32(*maxNew), Temperature: 0, Seed: &seed,
		})
		if err != nil {
			fail(step, err)
		}
		return &GenerateResult{Text: r.GetText(), NumTokens: r.GetNumTokens(), Version: r.GetVersion()}
	}
	stream := func(step string) *StreamResult {
		if *classify {
			return nil
		}
		ctx, cancel := call()
		defer cancel()
		seed := uint64(0)
		st, err := client.GenerateStream(ctx, &pb.GenerateRequest{
			Prompt: *prompt, MaxNewTokens: uint32(*maxNew), Temperature: 0, Seed: &seed,
		})
		if err != nil {
			fail(step, err)
		}
		res := &StreamResult{Versions: []uint64{}}
		for {
			chunk, err := st.Recv()
			if err == io.EOF {
				return res
			}
			if err != nil {
				fail(step, err)
			}
			res.Text += chunk.GetText()
			res.Chunks++
			res.NumTokens = chunk.GetNumTokens()
			res.Versions = append(res.Versions, chunk.GetVersion())
			res.Done = chunk.GetDone()
		}
	}
	classifyPrompt := func(step string) *ClassifyResult {
		if !*classify {
			return nil
		}
		ctx, cancel := call()
		defer cancel()
		r, err := client.Classify(ctx, &pb.ClassifyRequest{Text: *prompt})
		if err != nil {
			fail(step, err)
		}
		probs := map[string]float64{}
		for _, p := range r.GetProbabilities() {
			probs[p.GetLabel()] = p.GetProbability()
		}
		return &ClassifyResult{Label: r.GetLabel(), Probabilities: probs, Version: r.GetVersion()}
	}

	rep := Report{Addr: *addr}

	health := func(step string) *pb.HealthReply {
		ctx, cancel := call()
		defer cancel()
		h, err := client.Health(ctx, &pb.HealthRequest{WeightsDigest: *digest})
		if err != nil {
			fail(step, err)
		}
		return h
	}

	h := health("health_start")
	rep.HealthStatus, rep.Model, rep.Device = h.GetStatus(), h.GetModel(), h.GetDevice()
	rep.VersionStart, rep.WeightsSha256Start = h.GetVersion(), h.GetWeightsSha256()

	editReq := &pb.EditRequest{
		Prompt: *prompt, Target: *target, IdempotencyKey: *key,
		Provenance: map[string]string{"who": "go-client", "why": "clients/go example"},
	}
	if *checkAuth {
		ctx, cancel := call()
		_, err := client.Edit(ctx, editReq) // no token in the metadata
		cancel()
		rep.EditWithoutTokenCode = status.Code(err).String()
	}

	rep.GenerateBefore = generate("generate_before")
	rep.ClassifyBefore = classifyPrompt("classify_before")

	ctx, cancel := call()
	e, err := client.Edit(authed(ctx), editReq)
	cancel()
	if err != nil {
		fail("edit", err)
	}
	rep.Edit = EditResult{
		EditID: e.GetEditId(), Version: e.GetVersion(), LatencyMs: e.GetLatencyMs(),
		TargetLogprobBefore: e.GetTargetLogprobBefore(), TargetLogprobAfter: e.GetTargetLogprobAfter(),
		Replayed: e.GetReplayed(),
	}

	rep.GenerateAfter = generate("generate_after")
	rep.StreamAfter = stream("stream_after")
	rep.ClassifyAfter = classifyPrompt("classify_after")

	ctx, cancel = call()
	listed, err := client.ListEdits(ctx, &pb.ListEditsRequest{})
	cancel()
	if err != nil {
		fail("list_edits", err)
	}
	rep.ActiveEditIDs = []string{}
	for _, info := range listed.GetEdits() {
		rep.ActiveEditIDs = append(rep.ActiveEditIDs, info.GetEditId())
	}

	ctx, cancel = call()
	rb, err := client.Rollback(authed(ctx), &pb.RollbackRequest{What: &pb.RollbackRequest_EditId{EditId: e.GetEditId()}})
	cancel()
	if err != nil {
		fail("rollback", err)
	}
	rep.Rollback = RollbackResult{Version: rb.GetVersion(), RolledBack: rb.GetRolledBack()}
	if rep.Rollback.RolledBack == nil {
		rep.Rollback.RolledBack = []string{}
	}

	rep.GenerateAfterRollback = generate("generate_after_rollback")
	rep.ClassifyAfterRollback = classifyPrompt("classify_after_rollback")

	h = health("health_end")
	rep.VersionEnd, rep.ActiveEditsEnd, rep.WeightsSha256End = h.GetVersion(), h.GetActiveEdits(), h.GetWeightsSha256()

	out, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		fail("encode", err)
	}
	fmt.Println(string(out))
}

package meterd_test

// The real daemon for the client's tests: `meterd emulator` and `meterd run` as subprocesses on a
// temp dir, with their own socket and ports, as tests/common/daemon.rs starts them. The binary is
// METERD_BIN (scripts/test.sh sets it), else target/debug/meterd of this repository.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	product      = "prod-clients"
	deadlineSecs = 12 * 3600 // meterd's submit deadline and the emulator's window
)

var dimensions = []string{"requests", "storage_gb"}

func meterdBin(t *testing.T) string {
	bin := os.Getenv("METERD_BIN")
	if bin == "" {
		bin = "../../target/debug/meterd"
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// workdir is a short temp dir, so that socket paths stay under the 108 bytes of sun_path.
func workdir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "meterd-go-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func hourStart(at time.Time) int64 { return at.Unix() / 3600 * 3600 }

// waitFor polls condition until it holds or within has passed.
func waitFor(t *testing.T, within time.Duration, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type emulator struct {
	url string
}

func startEmulator(t *testing.T, dir string) *emulator {
	config := filepath.Join(dir, "emulator.toml")
	if err := os.WriteFile(config, []byte("window = \"12h\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "emulator.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(meterdBin(t), "emulator", "--listen", "127.0.0.1:0", "--config", config)
	cmd.Stderr = log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		log.Close()
	})
	// The first line on stdout is the URL; the read ends when the process does.
	url, _ := bufio.NewReader(stdout).ReadString('\n')
	url = strings.TrimSpace(url)
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("emulator printed %q", url)
	}
	return &emulator{url: url}
}

func (e *emulator) control(t *testing.T, method, path string, body, out interface{}) {
	t.Helper()
	var payload io.Reader
	if body != nil {
		encoded, _ := json.Marshal(body)
		payload = bytes.NewReader(encoded)
	}
	req, _ := http.NewRequest(method, e.url+path, payload)
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
}

type record struct {
	Customer  string `json:"customer_aws_account_id"`
	Dimension string `json:"dimension"`
	Hour      int64  `json:"hour"`
	Quantity  int64  `json:"quantity"`
}

func (e *emulator) records(t *testing.T) []record {
	var body struct{ Records []record }
	e.control(t, "GET", "/_emulator/records", nil, &body)
	return body.Records
}

// statuses sums the per-record statuses of every request.
func (e *emulator) statuses(t *testing.T) map[string]int {
	var body struct {
		Requests []struct{ Statuses map[string]int }
	}
	e.control(t, "GET", "/_emulator/requests", nil, &body)
	total := map[string]int{}
	for _, request := range body.Requests {
		for status, n := range request.Statuses {
			total[status] += n
		}
	}
	return total
}

func (e *emulator) setClockOffset(t *testing.T, secs int64) {
	e.control(t, "POST", "/_emulator/clock", map[string]int64{"offset_seconds": secs}, nil)
}

// daemon is one `meterd run` process; its JSON log goes to a file of the work dir.
type daemon struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	socket  string
	logPath string
	metrics string
}

func startMeterd(t *testing.T, dir string, emu *emulator, clockOffset int64) *daemon {
	logs, _ := filepath.Glob(filepath.Join(dir, "meterd-*.log"))
	d := &daemon{
		exited:  make(chan struct{}),
		socket:  filepath.Join(dir, "meterd.sock"),
		logPath: filepath.Join(dir, fmt.Sprintf("meterd-%d.log", len(logs)+1)),
	}
	dims, _ := json.Marshal(dimensions)
	log, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	d.cmd = exec.Command(meterdBin(t), "run")
	d.cmd.Stderr = log
	d.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"METERD_STORAGE__DATA_DIR=" + filepath.Join(dir, "data"),
		"METERD_INGEST__SOCKET=" + d.socket,
		"METERD_ADMIN__SOCKET=" + filepath.Join(dir, "admin.sock"),
		"METERD_METRICS__LISTEN=127.0.0.1:0",
		"METERD_AWS__ENDPOINT_URL=" + emu.url,
		"METERD_AWS__PRODUCT_CODE=" + product,
		"METERD_AWS__DIMENSIONS=" + string(dims),
		"METERD_LOG__FORMAT=json",
		"METERD_STORAGE__CHECKPOINT_INTERVAL=100ms",
		"METERD_SUBMIT__SEAL_DELAY=3h",
		"METERD_SUBMIT__DEADLINE=12h",
		"METERD_SUBMIT__MAX_REQUESTS_PER_SECOND=10",
		"METERD_SUBMIT__BACKOFF_BASE=50ms",
		"METERD_SUBMIT__BACKOFF_MAX=400ms",
		"METERD_TEST_CLOCK_OFFSET=" + strconv.FormatInt(clockOffset, 10),
		"AWS_ACCESS_KEY_ID=AKIDCLIENTTEST",
		"AWS_SECRET_ACCESS_KEY=client-test-secret",
		"AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "no-aws-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "no-aws-credentials"),
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
	})
	d.metrics = d.waitLog(t, "meterd ready")["metrics"].(string)
	return d
}

func (d *daemon) waitLog(t *testing.T, needle string) map[string]interface{} {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		text, _ := os.ReadFile(d.logPath)
		for _, line := range strings.Split(string(text), "\n") {
			var entry map[string]interface{}
			if json.Unmarshal([]byte(line), &entry) == nil {
				if message, _ := entry["message"].(string); strings.Contains(message, needle) {
					return entry
				}
			}
		}
		select {
		case <-d.exited:
			t.Fatalf("meterd exited without logging %q:\n%s", needle, text)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q within 30s:\n%s", needle, text)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) metric(t *testing.T, sample string) float64 {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(text), "\n") {
		if value := strings.TrimPrefix(line, sample+" "); value != line {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no sample %s", sample)
	return 0
}

func (d *daemon) kill9(t *testing.T) {
	d.cmd.Process.Kill()
	<-d.exited
	if status := d.cmd.ProcessState.Sys().(syscall.WaitStatus); status.Signal() != syscall.SIGKILL {
		t.Fatalf("meterd ended with %v, not SIGKILL", d.cmd.ProcessState)
	}
}

// terminate sends SIGTERM and returns the exit code.
func (d *daemon) terminate(t *testing.T) int {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("meterd did not stop within 30s of SIGTERM")
	}
	return d.cmd.ProcessState.ExitCode()
}

package meterd_test

// Reconnection, resending and the timeout against a scripted stand-in for meterd's socket, so
// that what arrives on each connection can be asserted byte for byte.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"meterd.invalid/meterd"
)

// fake is a Unix socket server running script in a goroutine; wait returns its error.
type fake struct {
	listener net.Listener
	done     chan error
}

type fakeConn struct {
	net.Conn
	lines *bufio.Reader
}

func startFake(t *testing.T, path string, script func(f *fake) error) *fake {
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{listener: listener, done: make(chan error, 1)}
	go func() { f.done <- script(f) }()
	return f
}

func (f *fake) accept() (*fakeConn, error) {
	conn, err := f.listener.Accept()
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &fakeConn{conn, bufio.NewReader(conn)}, nil
}

func (f *fake) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-f.done:
		f.listener.Close()
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fake meterd did not finish")
	}
}

func (c *fakeConn) readLines(n int) ([]string, error) {
	var lines []string
	for i := 0; i < n; i++ {
		line, err := c.lines.ReadString('\n')
		if err != nil {
			return lines, err
		}
		lines = append(lines, line)
	}
	return lines, nil
}

// expectEOF waits for the client to close its side.
func (c *fakeConn) expectEOF() error {
	if line, err := c.lines.ReadString('\n'); err == nil || line != "" {
		return errors.New("expected the client to close, got " + line)
	}
	return nil
}

func okReply(line string, duplicate bool) string {
	var event struct{ ID string }
	json.Unmarshal([]byte(line), &event)
	reply, _ := json.Marshal(map[string]interface{}{"ok": true, "id": event.ID, "duplicate": duplicate})
	return string(reply) + "\n"
}

func idOf(line string) string {
	var event struct{ ID string }
	json.Unmarshal([]byte(line), &event)
	return event.ID
}

var threeEvents = []meterd.Event{
	{CustomerIdentifier: "c-0", Dimension: "requests", Quantity: 0},
	{CustomerIdentifier: "c-1", Dimension: "requests", Quantity: 1},
	{CustomerIdentifier: "c-2", Dimension: "requests", Quantity: 2},
}

func TestUnansweredEventsAreResentUnderTheSameIDs(t *testing.T) {
	path := filepath.Join(workdir(t), "fake.sock")
	var first, second []string
	f := startFake(t, path, func(f *fake) error {
		// First connection: all three events arrive, one is answered, then the connection breaks.
		conn, err := f.accept()
		if err != nil {
			return err
		}
		if first, err = conn.readLines(3); err != nil {
			return err
		}
		conn.Write([]byte(okReply(first[0], false)))
		conn.Close()
		// Second connection: only the two unanswered events, unchanged; one had been stored.
		if conn, err = f.accept(); err != nil {
			return err
		}
		if second, err = conn.readLines(2); err != nil {
			return err
		}
		conn.Write([]byte(okReply(second[0], true) + okReply(second[1], false)))
		defer conn.Close()
		return conn.expectEOF()
	})
	client := meterd.New(path)
	results, err := client.SendMany(context.Background(), threeEvents)
	client.Close()
	f.wait(t)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(second, first[1:]) {
		t.Fatalf("resent %q, first sent %q", second, first)
	}
	ids := []string{idOf(first[0]), idOf(first[1]), idOf(first[2])}
	for i, line := range first {
		want, _ := json.Marshal(meterd.Event{CustomerIdentifier: threeEvents[i].CustomerIdentifier,
			Dimension: "requests", Quantity: int64(i), ID: ids[i]})
		if line != string(want)+"\n" || !generatedID.MatchString(ids[i]) {
			t.Fatalf("line %d: %q", i, line)
		}
	}
	if ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
		t.Fatalf("ids %q", ids)
	}
	want := []meterd.Result{
		{Ack: meterd.Ack{ID: ids[0]}},
		{Ack: meterd.Ack{ID: ids[1], Duplicate: true}},
		{Ack: meterd.Ack{ID: ids[2]}},
	}
	if !reflect.DeepEqual(results, want) {
		t.Fatalf("%+v", results)
	}
}

func TestTimeoutNamesTheUnansweredEventsAndTheyAreNotResent(t *testing.T) {
	path := filepath.Join(workdir(t), "fake.sock")
	var first, second []string
	gaveUp := make(chan struct{})
	f := startFake(t, path, func(f *fake) error {
		conn, err := f.accept()
		if err != nil {
			return err
		}
		if first, err = conn.readLines(2); err != nil {
			return err
		}
		<-gaveUp // no answer until the client has given up
		conn.Close()
		if conn, err = f.accept(); err != nil {
			return err
		}
		if second, err = conn.readLines(1); err != nil {
			return err
		}
		conn.Write([]byte(okReply(second[0], false)))
		defer conn.Close()
		return conn.expectEOF()
	})
	client := meterd.New(path)
	client.Timeout = 300 * time.Millisecond
	defer client.Close()
	named := threeEvents[0]
	named.ID = "x"
	started := time.Now()
	_, err := client.SendMany(context.Background(), []meterd.Event{named, threeEvents[1]})
	waited := time.Since(started)
	close(gaveUp)
	var timeout *meterd.TimeoutError
	if !errors.As(err, &timeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%T %v", err, err)
	}
	if waited < 300*time.Millisecond || waited > 2*time.Second {
		t.Fatalf("waited %v", waited)
	}
	generated := threeEvents[1]
	generated.ID = timeout.Unanswered[1].ID
	if !reflect.DeepEqual(timeout.Unanswered, []meterd.Event{named, generated}) || timeout.Total != 2 ||
		!generatedID.MatchString(generated.ID) || !timeout.Timeout() {
		t.Fatalf("%+v", timeout)
	}
	if !strings.HasPrefix(err.Error(), "meterd: 0 of 2 events answered: context deadline exceeded") {
		t.Fatal(err)
	}
	// The next call uses a new connection that carries only its own event.
	client.Timeout = 10 * time.Second
	if ack, err := client.Send(context.Background(), usage("y")); ack != (meterd.Ack{ID: "y"}) || err != nil {
		t.Fatalf("%+v %v", ack, err)
	}
	client.Close()
	f.wait(t)
	if idOf(first[0]) != "x" || idOf(first[1]) != generated.ID || len(second) != 1 || idOf(second[0]) != "y" {
		t.Fatalf("first %q, second %q", first, second)
	}
}

func TestNoSocketTimesOutWithTheConnectionError(t *testing.T) {
	client := meterd.New(filepath.Join(workdir(t), "absent.sock"))
	defer client.Close()
	client.Timeout = 200 * time.Millisecond
	_, err := client.Send(context.Background(), usage(""))
	var timeout *meterd.TimeoutError
	if !errors.As(err, &timeout) || !errors.Is(timeout.LastErr, syscall.ENOENT) {
		t.Fatalf("%v", err)
	}
}

func TestCancelAndCloseEndWaitingCalls(t *testing.T) {
	path := filepath.Join(workdir(t), "fake.sock")
	received := make(chan string)
	f := startFake(t, path, func(f *fake) error {
		conn, err := f.accept()
		if err != nil {
			return err
		}
		defer conn.Close()
		for i := 0; i < 2; i++ {
			lines, err := conn.readLines(1)
			if err != nil {
				return err
			}
			received <- idOf(lines[0])
		}
		return conn.expectEOF() // closed by the client, unanswered
	})
	arrived := func(want string) {
		select {
		case id := <-received:
			if id != want {
				t.Fatalf("%q arrived, not %q", id, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q did not arrive", want)
		}
	}
	client := meterd.New(path)
	send := func(ctx context.Context, id string) chan error {
		result := make(chan error, 1)
		go func() {
			_, err := client.Send(ctx, usage(id))
			result <- err
		}()
		return result
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := send(ctx, "cancelled")
	arrived("cancelled")
	cancel()
	var timeout *meterd.TimeoutError
	if err := <-cancelled; !errors.Is(err, context.Canceled) || !errors.As(err, &timeout) ||
		timeout.Unanswered[0].ID != "cancelled" {
		t.Fatalf("%v", err)
	}
	closed := send(context.Background(), "closed")
	arrived("closed")
	client.Close()
	if err := <-closed; err != meterd.ErrClosed {
		t.Fatalf("%v", err)
	}
	if _, err := client.Send(context.Background(), usage("after")); err != meterd.ErrClosed {
		t.Fatalf("%v", err)
	}
	f.wait(t)
}

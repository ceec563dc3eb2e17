// Package meterd is a client for meterd's ingest socket, standard library only.
//
// Events are pipelined over one Unix socket connection shared by every goroutine that uses the
// Client. Each event gets an ID when it has none, and an event not answered when the connection
// breaks (meterd was restarted or killed) is sent again, under the same ID, on the next
// connection: meterd answers it Duplicate if it had stored it already, so nothing is lost and
// nothing is counted twice.
package meterd

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// DefaultSocket is where meterd listens unless ingest.socket says otherwise.
const DefaultSocket = "/run/meterd/meterd.sock"

// DefaultTimeout bounds a Send or SendMany call when Client.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// The wire error codes meterd answers a refused event with (Error.Code).
const (
	CodeInvalidJSON      = "invalid_json"
	CodeMissingField     = "missing_field"
	CodeInvalidField     = "invalid_field"
	CodeUnknownDimension = "unknown_dimension"
	CodeOutOfWindow      = "out_of_window"
	CodeFutureTimestamp  = "future_timestamp"
	CodeLineTooLong      = "line_too_long"
	CodeQuantityOverflow = "quantity_overflow"
	CodeOverloaded       = "overloaded"
	CodeStorageError     = "storage_error"
	CodePermissionDenied = "permission_denied"
	CodeIDConflict       = "id_conflict"
	CodeRecordTooLarge   = "record_too_large"
	CodeUnknownProduct   = "unknown_product"
)

const (
	backoffFirst   = 50 * time.Millisecond
	backoffMax     = time.Second
	connectTimeout = time.Second
)

// Event is one usage event. Give exactly one of CustomerAWSAccountID and CustomerIdentifier.
type Event struct {
	CustomerAWSAccountID string
	CustomerIdentifier   string
	LicenseARN           string
	// ProductCode names the event's product; required when meterd serves several products
	// (aws.products), optional with one.
	ProductCode string
	Dimension   string
	// Quantity must be 0..2147483647; meterd refuses anything else with invalid_field.
	Quantity int64
	// Timestamp is when the usage happened; zero means when meterd receives the event.
	Timestamp time.Time
	// Tags become the record's UsageAllocations (at most 5 pairs).
	Tags map[string]string
	// ID is the idempotency key; empty means the client generates one.
	ID string
}

// MarshalJSON writes the event as meterd's wire format, leaving out empty fields.
func (e Event) MarshalJSON() ([]byte, error) {
	var timestamp *int64
	if !e.Timestamp.IsZero() {
		secs := e.Timestamp.Unix()
		timestamp = &secs
	}
	return json.Marshal(struct {
		CustomerAWSAccountID string            `json:"customer_aws_account_id,omitempty"`
		CustomerIdentifier   string            `json:"customer_identifier,omitempty"`
		LicenseARN           string            `json:"license_arn,omitempty"`
		ProductCode          string            `json:"product_code,omitempty"`
		Dimension            string            `json:"dimension,omitempty"`
		Quantity             int64             `json:"quantity"`
		Timestamp            *int64            `json:"timestamp,omitempty"`
		Tags                 map[string]string `json:"tags,omitempty"`
		ID                   string            `json:"id,omitempty"`
	}{e.CustomerAWSAccountID, e.CustomerIdentifier, e.LicenseARN, e.ProductCode, e.Dimension, e.Quantity, timestamp, e.Tags, e.ID})
}

// Ack says meterd stored the event durably; Duplicate: it had stored this ID before.
type Ack struct {
	ID        string
	Duplicate bool
}

// Error is meterd's refusal of one event, with the wire error code.
type Error struct {
	Code    string // e.g. CodeInvalidField
	Message string
	ID      string // the ID meterd echoed; empty when the line had no readable one
	Event   Event  // the event as sent, with its ID
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Temporary is true for overloaded and storage_error: sending the same event again may succeed.
func (e *Error) Temporary() bool { return e.Code == CodeOverloaded || e.Code == CodeStorageError }

// Result is the answer to one event of SendMany: an Ack, or Err when meterd refused it. ID is
// the event's ID either way.
type Result struct {
	Ack
	Err *Error
}

// TimeoutError is returned when some events have no answer before the timeout or the context's
// end. Send the Unanswered events again later, unchanged: meterd counts each at most once.
type TimeoutError struct {
	Unanswered []Event  // with their IDs
	Results    []Result // what SendMany would have returned; zero for each unanswered event
	Total      int
	LastErr    error // the last connection error, if any
	Cause      error // context.DeadlineExceeded or context.Canceled
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("meterd: %d of %d events answered: %v (last connection error: %v)",
		e.Total-len(e.Unanswered), e.Total, e.Cause, e.LastErr)
}

// Timeout reports true, as net.Error does.
func (e *TimeoutError) Timeout() bool { return true }

func (e *TimeoutError) Unwrap() error { return e.Cause }

// ErrClosed is returned by calls on a closed Client, and by calls waiting when it was closed.
var ErrClosed = errors.New("meterd: client closed")

// Client sends events to one meterd socket. It is safe for concurrent use; the connection is
// made on first use and remade whenever it breaks.
type Client struct {
	// Timeout bounds each Send and SendMany call, reconnections included (DefaultTimeout if 0).
	// Set it before the first call.
	Timeout time.Duration

	path     string
	mu       sync.Mutex
	conn     *conn
	inflight []*entry // written (or queued) to conn, awaiting replies in order
	dialing  bool
	closed   bool
	closedCh chan struct{}
	lastErr  error
}

// New returns a client for the socket at path (DefaultSocket if empty). It connects lazily.
func New(path string) *Client {
	if path == "" {
		path = DefaultSocket
	}
	return &Client{path: path, closedCh: make(chan struct{})}
}

// Send sends one event. A refusal is returned as *Error; no answer in time as *TimeoutError.
func (c *Client) Send(ctx context.Context, event Event) (Ack, error) {
	results, err := c.SendMany(ctx, []Event{event})
	if err != nil {
		return Ack{}, err
	}
	if results[0].Err != nil {
		return Ack{}, results[0].Err
	}
	return results[0].Ack, nil
}

// SendMany pipelines events and returns one Result per event, in order. The error is
// *TimeoutError when some event has no answer in time, ErrClosed, or an encoding error.
func (c *Client) SendMany(ctx context.Context, events []Event) ([]Result, error) {
	if len(events) == 0 {
		return nil, nil
	}
	cl := &call{events: make([]Event, len(events)), results: make([]Result, len(events)),
		answered: make([]bool, len(events)), remaining: len(events), done: make(chan struct{})}
	entries := make([]*entry, len(events))
	var lines []byte
	for i, event := range events {
		if event.ID == "" {
			event.ID = newID()
		}
		line, err := json.Marshal(event)
		if err != nil {
			return nil, err
		}
		line = append(line, '\n')
		cl.events[i] = event
		entries[i] = &entry{call: cl, index: i, id: event.ID, line: line}
		lines = append(lines, line...)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.inflight = append(c.inflight, entries...)
	if c.conn != nil {
		c.conn.write(lines)
	} else {
		c.startDialing()
	}
	c.mu.Unlock()

	select {
	case <-cl.done:
	case <-ctx.Done():
		c.mu.Lock()
		cl.abandoned = !cl.finished
		lastErr := c.lastErr
		c.mu.Unlock()
		if cl.abandoned {
			timeoutErr := &TimeoutError{Results: cl.results, Total: len(events), LastErr: lastErr, Cause: ctx.Err()}
			for i, answered := range cl.answered {
				if !answered {
					timeoutErr.Unanswered = append(timeoutErr.Unanswered, cl.events[i])
				}
			}
			return nil, timeoutErr
		}
	}
	if cl.err != nil {
		return nil, cl.err
	}
	return cl.results, nil
}

// Close closes the connection; calls still waiting return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	close(c.closedCh)
	if c.conn != nil {
		c.conn.close()
		c.conn = nil
	}
	for _, e := range c.inflight {
		e.call.fail(ErrClosed)
	}
	c.inflight = nil
	return nil
}

// call is one SendMany: its results and the channel its caller waits on.
type call struct {
	events    []Event
	results   []Result
	answered  []bool
	remaining int
	done      chan struct{}
	finished  bool
	abandoned bool // the caller gave up: its events are not sent again
	err       error
}

// finish records one answer; the client's lock is held.
func (cl *call) finish(index int, result Result) {
	if cl.finished || cl.abandoned || cl.answered[index] {
		return
	}
	cl.results[index] = result
	cl.answered[index] = true
	cl.remaining--
	if cl.remaining == 0 {
		cl.finished = true
		close(cl.done)
	}
}

func (cl *call) fail(err error) {
	if !cl.finished && !cl.abandoned {
		cl.finished = true
		cl.err = err
		close(cl.done)
	}
}

type entry struct {
	call  *call
	index int
	id    string
	line  []byte
}

// conn is one connection and its writer's queue: writes never block the client's lock.
type conn struct {
	net.Conn
	mu   sync.Mutex
	out  []byte
	wake chan struct{}
	dead chan struct{}
	once sync.Once
}

func (cn *conn) write(lines []byte) {
	cn.mu.Lock()
	cn.out = append(cn.out, lines...)
	cn.mu.Unlock()
	select {
	case cn.wake <- struct{}{}:
	default:
	}
}

func (cn *conn) close() {
	cn.once.Do(func() {
		close(cn.dead)
		cn.Conn.Close()
	})
}

type reply struct {
	OK        bool    `json:"ok"`
	ID        *string `json:"id"`
	Duplicate bool    `json:"duplicate"`
	Error     string  `json:"error"`
	Message   string  `json:"message"`
}

// startDialing starts the dialer unless it runs; the lock is held.
func (c *Client) startDialing() {
	if !c.dialing {
		c.dialing = true
		go c.dial()
	}
}

// dial connects, with backoff, while events wait; then writes every one of them in order.
func (c *Client) dial() {
	var backoff time.Duration
	for {
		c.mu.Lock()
		c.dropAbandoned()
		if c.closed || len(c.inflight) == 0 {
			c.dialing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		if backoff > 0 {
			select {
			case <-time.After(backoff):
			case <-c.closedCh:
			}
		}
		nc, err := net.DialTimeout("unix", c.path, connectTimeout)
		c.mu.Lock()
		if err != nil {
			c.lastErr = err
			c.mu.Unlock()
			backoff *= 2
			if backoff < backoffFirst {
				backoff = backoffFirst
			} else if backoff > backoffMax {
				backoff = backoffMax
			}
			continue
		}
		if c.closed {
			c.dialing = false
			c.mu.Unlock()
			nc.Close()
			return
		}
		cn := &conn{Conn: nc, wake: make(chan struct{}, 1), dead: make(chan struct{})}
		c.conn, c.dialing = cn, false
		var lines []byte
		for _, e := range c.inflight {
			lines = append(lines, e.line...)
		}
		cn.write(lines)
		go c.writeLoop(cn)
		go c.readLoop(cn)
		c.mu.Unlock()
		return
	}
}

// dropAbandoned forgets events whose callers gave up, before they would be sent again.
func (c *Client) dropAbandoned() {
	kept := c.inflight[:0]
	for _, e := range c.inflight {
		if !e.call.abandoned {
			kept = append(kept, e)
		}
	}
	for i := len(kept); i < len(c.inflight); i++ {
		c.inflight[i] = nil
	}
	c.inflight = kept
}

func (c *Client) writeLoop(cn *conn) {
	for {
		select {
		case <-cn.wake:
		case <-cn.dead:
			return
		}
		cn.mu.Lock()
		out := cn.out
		cn.out = nil
		cn.mu.Unlock()
		if _, err := cn.Write(out); err != nil {
			c.broken(cn, err)
			return
		}
	}
}

func (c *Client) readLoop(cn *conn) {
	r := bufio.NewReaderSize(cn, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			c.broken(cn, err)
			return
		}
		var rep reply
		if err := json.Unmarshal(line, &rep); err != nil {
			c.broken(cn, fmt.Errorf("meterd sent an unreadable reply %q: %w", line, err))
			return
		}
		c.mu.Lock()
		if c.conn != cn {
			c.mu.Unlock()
			return
		}
		err = c.answer(&rep)
		c.mu.Unlock()
		if err != nil {
			c.broken(cn, err)
			return
		}
	}
}

// answer gives a reply to the oldest unanswered event; the lock is held.
func (c *Client) answer(rep *reply) error {
	if len(c.inflight) == 0 {
		return errors.New("meterd sent a reply for no event")
	}
	e := c.inflight[0]
	if (rep.OK || rep.ID != nil) && (rep.ID == nil || *rep.ID != e.id) {
		return fmt.Errorf("a reply does not answer event id %q", e.id)
	}
	c.inflight[0] = nil
	c.inflight = c.inflight[1:]
	e.call.finish(e.index, c.result(rep, e))
	if rep.Error == CodePermissionDenied {
		// Every event on this socket would be refused the same way.
		for _, other := range c.inflight {
			other.call.finish(other.index, c.result(rep, other))
		}
		c.inflight = nil
	}
	return nil
}

func (c *Client) result(rep *reply, e *entry) Result {
	if rep.OK {
		return Result{Ack: Ack{ID: e.id, Duplicate: rep.Duplicate}}
	}
	refusal := &Error{Code: rep.Error, Message: rep.Message, Event: e.call.events[e.index]}
	if rep.ID != nil {
		refusal.ID = *rep.ID
	}
	return Result{Ack: Ack{ID: e.id}, Err: refusal}
}

// broken retires a connection; its unanswered events go to the next one.
func (c *Client) broken(cn *conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cn.close()
	if c.conn != cn {
		return
	}
	c.conn = nil
	c.lastErr = err
	c.dropAbandoned()
	if len(c.inflight) > 0 && !c.closed {
		c.startDialing()
	}
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("meterd: no randomness for event ids: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

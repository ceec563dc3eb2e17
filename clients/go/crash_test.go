package meterd_test

// SIGKILL meterd while the application is sending through the client; restart it; the client
// reconnects and resends what was unanswered under the same IDs. Once the hour is sealed and
// submitted, the emulator has billed exactly what the application sent, once.

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"meterd.invalid/meterd"
)

const (
	workers = 4
	batch   = 50
	later   = 4 * 3600
)

type key struct{ customer, dimension string }

func TestSIGKILLMidStreamBillsEveryEventOnce(t *testing.T) {
	dir := workdir(t)
	emu := startEmulator(t, dir)
	hour := hourStart(time.Now())
	first := startMeterd(t, dir, emu, 0)
	client := meterd.New(first.socket)
	client.Timeout = 60 * time.Second
	defer client.Close()

	var (
		mu       sync.Mutex
		sent     []meterd.Event // every event the application sent, with the ID of its Ack
		acks     []meterd.Ack
		failures []error
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	application := func(worker int) {
		defer wg.Done()
		for n := 0; ; n += batch {
			select {
			case <-stop:
				return
			default:
			}
			events := make([]meterd.Event, batch)
			for i := range events {
				events[i] = meterd.Event{
					CustomerAWSAccountID: fmt.Sprint(100000000000 + worker),
					Dimension:            dimensions[(n+i)%2],
					Quantity:             int64((n+i)%7 + 1),
					Timestamp:            time.Unix(hour+1, 0),
				}
			}
			results, err := client.SendMany(context.Background(), events)
			mu.Lock()
			for i, r := range results {
				if r.Err != nil {
					err = r.Err
				}
				events[i].ID = r.ID
			}
			if err != nil {
				failures = append(failures, err)
			} else {
				sent = append(sent, events...)
				for _, r := range results {
					acks = append(acks, r.Ack)
				}
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}
	acked := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(sent)
	}
	wg.Add(workers)
	for w := 0; w < workers; w++ {
		go application(w)
	}
	waitFor(t, 30*time.Second, "2000 events acknowledged", func() bool { return acked() >= 2000 })
	first.kill9(t)
	atKill := acked()
	// A new meterd on the same data dir and socket; the client finds it on its own and the
	// application goes on sending.
	second := startMeterd(t, dir, emu, 0)
	waitFor(t, 30*time.Second, "2000 events accepted after the restart", func() bool {
		return second.metric(t, "meterd_events_accepted_total") >= 2000
	})
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatal(failures)
	}

	ids := map[string]bool{}
	resentStored := 0
	for _, ack := range acks {
		ids[ack.ID] = true
		if ack.Duplicate {
			resentStored++
		}
	}
	if len(ids) != len(sent) || atKill >= len(sent) {
		t.Fatalf("%d ids for %d events, %d acknowledged before the kill", len(ids), len(sent), atKill)
	}
	// Replies meterd never sent before the kill: what it had stored is answered duplicate by the
	// new meterd, the rest is counted by it; nothing else reached it.
	if n := second.metric(t, "meterd_events_duplicate_total"); n != float64(resentStored) {
		t.Fatalf("the new meterd answered %v duplicates, the application saw %d", n, resentStored)
	}
	if n := second.metric(t, "meterd_events_accepted_total"); n > float64(len(sent)-atKill) {
		t.Fatalf("the new meterd counted %v events, only %d were unanswered", n, len(sent)-atKill)
	}

	// The application resends everything it sent: every event is known under its ID.
	again, err := client.SendMany(context.Background(), sent)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range again {
		if r != (meterd.Result{Ack: meterd.Ack{ID: sent[i].ID, Duplicate: true}}) {
			t.Fatalf("resent event %d: %+v", i, r)
		}
	}
	client.Close()
	if code := second.terminate(t); code != 0 {
		t.Fatalf("meterd exited with %d after SIGTERM", code)
	}

	expected := map[key]int64{}
	for _, e := range sent {
		expected[key{e.CustomerAWSAccountID, e.Dimension}] += e.Quantity
	}
	emu.setClockOffset(t, later)
	startMeterd(t, dir, emu, later) // the hour is sealed and submitted
	waitFor(t, 60*time.Second, "every record billed", func() bool { return len(emu.records(t)) >= len(expected) })
	records := emu.records(t)
	billed := map[key]int64{}
	for _, r := range records {
		if r.Hour != hour {
			t.Fatalf("record for hour %d, events were in %d", r.Hour, hour)
		}
		billed[key{r.Customer, r.Dimension}] = r.Quantity
	}
	if len(records) != workers*len(dimensions) || len(expected) != len(records) || !reflect.DeepEqual(billed, expected) {
		t.Fatalf("billed %v, sent %v", records, expected)
	}
	if n := emu.statuses(t)["DuplicateRecord"]; n != 0 {
		t.Fatalf("%d DuplicateRecord", n)
	}
	t.Logf("%d events, %d acknowledged before the SIGKILL, %d stored but unanswered (answered duplicate after the restart), %d records billed",
		len(sent), atKill, resentStored, len(records))
}

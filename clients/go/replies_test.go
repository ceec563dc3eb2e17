package meterd_test

// Exact replies of the real daemon, as the client hands them to the application.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"meterd.invalid/meterd"
)

var generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func usage(id string) meterd.Event {
	return meterd.Event{CustomerAWSAccountID: "111122223333", Dimension: "requests", Quantity: 1, ID: id}
}

func TestAcceptedEventsAndResentIDs(t *testing.T) {
	dir := workdir(t)
	d := startMeterd(t, dir, startEmulator(t, dir), 0)
	client := meterd.New(d.socket)
	defer client.Close()
	ctx := context.Background()

	generated, err := client.Send(ctx, usage(""))
	if err != nil || !generatedID.MatchString(generated.ID) || generated.Duplicate {
		t.Fatalf("%+v %v", generated, err)
	}
	tagged := usage("order-1")
	tagged.Tags = map[string]string{"team": "a"}
	for _, want := range []meterd.Ack{{ID: "order-1"}, {ID: "order-1", Duplicate: true}} {
		if ack, err := client.Send(ctx, tagged); ack != want || err != nil {
			t.Fatalf("got %+v %v, want %+v", ack, err, want)
		}
	}
	// meterd stored the first event under the ID the client made up.
	if ack, err := client.Send(ctx, usage(generated.ID)); ack != (meterd.Ack{ID: generated.ID, Duplicate: true}) || err != nil {
		t.Fatalf("%+v %v", ack, err)
	}
	if n := d.metric(t, "meterd_events_accepted_total"); n != 2 {
		t.Fatalf("accepted %v", n)
	}
	if n := d.metric(t, "meterd_events_duplicate_total"); n != 2 {
		t.Fatalf("duplicates %v", n)
	}
}

func TestSendManyAnswersEveryEventInOrder(t *testing.T) {
	dir := workdir(t)
	d := startMeterd(t, dir, startEmulator(t, dir), 0)
	client := meterd.New(d.socket)
	defer client.Close()

	now := time.Now()
	tooOld := now.Add(-(deadlineSecs + 3600) * time.Second)
	ahead := now.Add(time.Hour)
	hour := time.Unix(hourStart(now), 0)
	with := func(id string, change func(*meterd.Event)) meterd.Event {
		e := usage(id)
		change(&e)
		return e
	}
	events := []meterd.Event{
		usage("a"),
		with("b", func(e *meterd.Event) { e.CustomerAWSAccountID = "12ab" }),
		with("c", func(e *meterd.Event) { e.CustomerAWSAccountID = "" }),
		with("d", func(e *meterd.Event) { e.Dimension = "cpu" }),
		with("e", func(e *meterd.Event) { e.Dimension = "" }),
		with("f", func(e *meterd.Event) { e.Timestamp = tooOld }),
		with("g", func(e *meterd.Event) { e.Timestamp = ahead }),
		with("h", func(e *meterd.Event) { e.Dimension = strings.Repeat("x", 70000) }),
		with("i", func(e *meterd.Event) {
			e.CustomerAWSAccountID, e.Quantity, e.Timestamp = "444455556666", 2147483647, hour
		}),
		with("j", func(e *meterd.Event) { e.CustomerAWSAccountID, e.Timestamp = "444455556666", hour }),
		with("k", func(e *meterd.Event) { e.Quantity = -1 }),
		with("l", func(e *meterd.Event) {
			e.Tags = map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6"}
		}),
		with("m", func(e *meterd.Event) { e.LicenseARN = "nope" }),
	}
	longLine, _ := json.Marshal(events[7])

	results, err := client.SendMany(context.Background(), events)
	if err != nil {
		t.Fatal(err)
	}
	future := results[6].Err
	lead := regexp.MustCompile(`^timestamp ` + strconv.FormatInt(ahead.Unix(), 10) + ` is (\d+)s ahead of meterd's clock$`).
		FindStringSubmatch(future.Message)
	if future.Code != meterd.CodeFutureTimestamp || future.ID != "g" || lead == nil {
		t.Fatalf("%+v", future)
	}
	if secs, _ := strconv.Atoi(lead[1]); secs < 3590 || secs > 3600 {
		t.Fatalf("%s", future.Message)
	}
	type outcome struct{ ID, Code, Message, EchoedID string }
	ok := func(id string) outcome { return outcome{ID: id} }
	refused := func(id, code, message, echoed string) outcome { return outcome{id, code, message, echoed} }
	want := []outcome{
		ok("a"),
		refused("b", meterd.CodeInvalidField, "`customer_aws_account_id` must be digits only", "b"),
		refused("c", meterd.CodeMissingField, "one of `customer_aws_account_id` and `customer_identifier` is required", "c"),
		refused("d", meterd.CodeUnknownDimension, `dimension "cpu" is not in aws.dimensions`, "d"),
		refused("e", meterd.CodeMissingField, "`dimension` is required", "e"),
		refused("f", meterd.CodeOutOfWindow, fmt.Sprintf("timestamp %d is in an hour past the submit deadline (%ds after its start); the service would refuse it", tooOld.Unix(), deadlineSecs), "f"),
		refused("h", meterd.CodeLineTooLong, fmt.Sprintf("line of %d bytes is longer than 65536", len(longLine)), ""),
		ok("i"),
		refused("j", meterd.CodeQuantityOverflow, "the hour's total for this customer and dimension would reach 2147483648, above 2147483647", "j"),
		refused("k", meterd.CodeInvalidField, "`quantity` must be an integer from 0 to 2147483647, got -1", "k"),
		refused("l", meterd.CodeInvalidField, "`tags` has 6 pairs; at most 5 are allowed", "l"),
		refused("m", meterd.CodeInvalidField, "`license_arn` \"nope\" is not a license ARN", "m"),
	}
	var got []outcome
	for i, r := range results {
		switch {
		case i == 6:
		case r.Err == nil && !r.Duplicate:
			got = append(got, ok(r.ID))
		case r.Err != nil:
			got = append(got, refused(r.ID, r.Err.Code, r.Err.Message, r.Err.ID))
		default:
			t.Fatalf("unexpected %+v", r)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if !reflect.DeepEqual(results[1].Err.Event, events[1]) {
		t.Fatalf("the refusal carries %+v", results[1].Err.Event)
	}
	if n := d.metric(t, "meterd_events_accepted_total"); n != 2 {
		t.Fatalf("accepted %v", n)
	}
}

func TestSendReturnsATypedErrorWithTheWireCode(t *testing.T) {
	dir := workdir(t)
	d := startMeterd(t, dir, startEmulator(t, dir), 0)
	client := meterd.New(d.socket)
	defer client.Close()

	event := usage("")
	event.Dimension = "cpu"
	_, err := client.Send(context.Background(), event)
	var refusal *meterd.Error
	if !errors.As(err, &refusal) {
		t.Fatalf("%T %v", err, err)
	}
	if refusal.Code != meterd.CodeUnknownDimension || refusal.Message != `dimension "cpu" is not in aws.dimensions` ||
		err.Error() != `unknown_dimension: dimension "cpu" is not in aws.dimensions` || refusal.Temporary() {
		t.Fatalf("%+v", refusal)
	}
	event.ID = refusal.ID
	if !generatedID.MatchString(refusal.ID) || !reflect.DeepEqual(refusal.Event, event) {
		t.Fatalf("%+v", refusal)
	}
}

func TestEventsNameTheirProduct(t *testing.T) {
	dir := workdir(t)
	d := startMeterd(t, dir, startEmulator(t, dir), 0)
	client := meterd.New(d.socket)
	defer client.Close()
	ctx := context.Background()

	named := usage("p-1")
	named.ProductCode = product
	if ack, err := client.Send(ctx, named); ack != (meterd.Ack{ID: "p-1"}) || err != nil {
		t.Fatalf("%+v %v", ack, err)
	}
	// The same usage without the field is the same event of the one configured product.
	if ack, err := client.Send(ctx, usage("p-1")); ack != (meterd.Ack{ID: "p-1", Duplicate: true}) || err != nil {
		t.Fatalf("%+v %v", ack, err)
	}
	other := usage("p-2")
	other.ProductCode = "prod-other"
	_, err := client.Send(ctx, other)
	var refused *meterd.Error
	if !errors.As(err, &refused) || refused.Code != meterd.CodeUnknownProduct || refused.ID != "p-2" || refused.Temporary() {
		t.Fatalf("%v", err)
	}
	want := "`product_code` \"prod-other\" is not a configured product (configured: \"prod-clients\")"
	if refused.Message != want {
		t.Fatalf("message %q", refused.Message)
	}
}

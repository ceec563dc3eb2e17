package meterd_test

import (
	"context"
	"fmt"

	"meterd.invalid/meterd"
)

// The example of README.md (compiled, not run: it needs a running meterd).
func Example() {
	client := meterd.New("/run/meterd/meterd.sock")
	defer client.Close()
	event := meterd.Event{CustomerAWSAccountID: "111122223333", Dimension: "requests", Quantity: 5}
	ack, err := client.Send(context.Background(), event) // err: *meterd.Error (with the wire Code) or *meterd.TimeoutError
	fmt.Println(ack.ID, ack.Duplicate, err)
}

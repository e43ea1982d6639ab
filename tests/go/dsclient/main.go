// dsclient proves kiln's contracts stand on their own: it is built against Go
// code generated from proto/ alone, puts an entity through
// kiln.pb.datastore.v1.DatastoreService and reads it back.
//
//	dsclient -addr 127.0.0.1:50051 -token APP_TOKEN
//
// It prints one JSON object: {"id": <allocated id>, "entity": <the entity read back>}.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	ds "kiln.dev/gen/kiln/pb/datastore/v1"
)

func str(s string) *ds.Value { return &ds.Value{ValueType: &ds.Value_StringValue{StringValue: s}} }

func run(addr, token string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	client := ds.NewDatastoreServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)

	entity := &ds.Entity{
		Key: &ds.Key{
			PartitionId: &ds.PartitionId{Namespace: "go-test"},
			Path:        []*ds.PathElement{{Kind: "GoGreeting"}},
		},
		Properties: map[string]*ds.Value{
			"content": str("hello from Go"),
			"n":       {ValueType: &ds.Value_IntegerValue{IntegerValue: 42}},
			"ok":      {ValueType: &ds.Value_BooleanValue{BooleanValue: true}},
			"ratio":   {ValueType: &ds.Value_DoubleValue{DoubleValue: 0.25}},
			"when":    {ValueType: &ds.Value_TimestampValue{TimestampValue: timestamppb.New(time.Unix(1700000000, 5000).UTC())}},
			"tags": {ValueType: &ds.Value_ArrayValue{ArrayValue: &ds.ArrayValue{
				Values: []*ds.Value{str("a"), str("b")},
			}}},
		},
	}
	put, err := client.Put(ctx, &ds.PutRequest{Entities: []*ds.Entity{entity}})
	if err != nil {
		return fmt.Errorf("Put: %w", err)
	}
	key := put.GetKeys()[0]
	got, err := client.Get(ctx, &ds.GetRequest{Keys: []*ds.Key{key}})
	if err != nil {
		return fmt.Errorf("Get: %w", err)
	}
	if len(got.GetResults()) != 1 || got.GetResults()[0].GetEntity() == nil {
		return fmt.Errorf("Get: entity not found")
	}
	raw, err := protojson.Marshal(got.GetResults()[0].GetEntity())
	if err != nil {
		return err
	}
	path := key.GetPath()
	out, err := json.Marshal(map[string]any{"id": path[len(path)-1].GetId(), "entity": json.RawMessage(raw)})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "datastore_svc address")
	token := flag.String("token", "", "app identity token")
	flag.Parse()
	if err := run(*addr, *token); err != nil {
		fmt.Fprintln(os.Stderr, "dsclient:", err)
		os.Exit(1)
	}
}

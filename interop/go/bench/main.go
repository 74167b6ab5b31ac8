// Command bench runs the benchmark workloads of bench/bench.py against an
// echo server with a gorilla client, and prints the figures as JSON.
//
//	bench -url ws://127.0.0.1:8080/ws -rounds 2000 -backtoback 200 -messages 20000 -large 50
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"time"

	"github.com/gorilla/websocket"
)

var (
	url        = flag.String("url", "ws://localhost:8080/ws", "echo server URL")
	rounds     = flag.Int("rounds", 2000, "sequential round trips of 32 bytes")
	backToBack = flag.Int("backtoback", 200, "pairs of messages sent back to back")
	messages   = flag.Int("messages", 20000, "64-byte messages pipelined")
	large      = flag.Int("large", 50, "1 MiB binary messages")
)

func dial() *websocket.Conn {
	dialer := websocket.Dialer{ReadBufferSize: 65536, WriteBufferSize: 65536}
	conn, _, err := dialer.Dial(*url, nil)
	if err != nil {
		log.Fatal("dial:", err)
	}
	return conn
}

func roundTrip(conn *websocket.Conn, kind int, p []byte) []byte {
	if err := conn.WriteMessage(kind, p); err != nil {
		log.Fatal("write:", err)
	}
	_, got, err := conn.ReadMessage()
	if err != nil {
		log.Fatal("read:", err)
	}
	return got
}

func median(times []time.Duration) time.Duration {
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[len(times)/2]
}

func rtt(results map[string]float64) {
	conn := dial()
	defer conn.Close()
	message := bytes.Repeat([]byte("x"), 32)
	times := make([]time.Duration, *rounds)
	for i := range times {
		start := time.Now()
		roundTrip(conn, websocket.TextMessage, message)
		times[i] = time.Since(start)
	}
	results["rtt_p50_us"] = float64(median(times).Nanoseconds()) / 1e3
	results["rtt_p99_us"] = float64(times[len(times)*99/100].Nanoseconds()) / 1e3
}

func secondOfTwo(results map[string]float64) {
	conn := dial()
	defer conn.Close()
	times := make([]time.Duration, *backToBack)
	for i := range times {
		conn.WriteMessage(websocket.TextMessage, []byte("first message..."))
		start := time.Now()
		conn.WriteMessage(websocket.TextMessage, []byte("second message.."))
		conn.ReadMessage()
		conn.ReadMessage()
		times[i] = time.Since(start)
	}
	results["second_rtt_p50_us"] = float64(median(times).Nanoseconds()) / 1e3
}

func throughput(results map[string]float64) {
	conn := dial()
	defer conn.Close()
	done := make(chan error)
	start := time.Now()
	go func() { // the reader goroutine checks every echo, in order
		for i := 0; i < *messages; i++ {
			_, got, err := conn.ReadMessage()
			if err != nil || string(got) != fmt.Sprintf("%064d", i) {
				done <- fmt.Errorf("message %d: %v %q", i, err, got)
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < *messages; i++ {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%064d", i))); err != nil {
			log.Fatal("write:", err)
		}
	}
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	results["msgs_per_s"] = float64(*messages) / time.Since(start).Seconds()
}

func largeEcho(results map[string]float64) {
	conn := dial()
	defer conn.Close()
	data := make([]byte, 1<<20)
	rand.Read(data)
	start := time.Now()
	for i := 0; i < *large; i++ {
		if !bytes.Equal(roundTrip(conn, websocket.BinaryMessage, data), data) {
			log.Fatal("1 MiB echo differs")
		}
	}
	results["mb_per_s"] = float64(*large) * float64(len(data)) / time.Since(start).Seconds() / 1e6
}

func main() {
	flag.Parse()
	results := map[string]float64{}
	rtt(results)
	secondOfTwo(results)
	throughput(results)
	largeEcho(results)
	json.NewEncoder(os.Stdout).Encode(results)
}

// Command bench is the load client of bench/bench.py: the same workloads
// against any echo server, over WebSocket (gorilla) for a ws:// URL and over
// plain TCP for a tcp:// one; every echo is checked and the figures are
// printed as one JSON object. With -serve-tcp it is a plain TCP echo server
// instead, the floor of the client table.
//
//	bench -url ws://127.0.0.1:8080/ws -rounds 2000 -backtoback 200 -messages 20000 -large 50
//	bench -url tcp://127.0.0.1:9000 -only rtt,pipelined
//	bench -url ws://127.0.0.1:8080/ws -only conns -conns 1000
//	bench -serve-tcp 127.0.0.1:0    # prints "listening on tcp://ADDR"
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

var (
	url        = flag.String("url", "ws://localhost:8080/ws", "echo server: ws://HOST:PORT/PATH, or tcp://HOST:PORT for plain TCP")
	only       = flag.String("only", "rtt,backtoback,pipelined,large", "workloads to run, comma-separated; also: conns")
	rounds     = flag.Int("rounds", 2000, "rtt: sequential round trips of 32 bytes")
	backToBack = flag.Int("backtoback", 200, "backtoback: pairs of messages sent back to back")
	messages   = flag.Int("messages", 20000, "pipelined: 64-byte messages")
	large      = flag.Int("large", 50, "large: 1 MiB binary messages, one at a time")
	conns      = flag.Int("conns", 100, "conns: connections open at once, 20 round trips of 32 bytes on each")
	serveTCP   = flag.String("serve-tcp", "", "serve a plain TCP echo on this address instead (port 0: any free port)")
	compress   = flag.Bool("compression", false, "offer permessage-deflate, and fail if the server does not agree")
)

// Nothing may take longer than this: a stuck server fails the run instead of hanging it.
const deadline = 2 * time.Minute

// echoConn is one connection to the echo server.
type echoConn interface {
	write(p []byte, text bool) error
	// read returns the next message, of n bytes: plain TCP needs n to find its end.
	read(n int) ([]byte, error)
	close()
}

type wsConn struct{ *websocket.Conn }

func (c wsConn) write(p []byte, text bool) error {
	if text {
		return c.WriteMessage(websocket.TextMessage, p)
	}
	return c.WriteMessage(websocket.BinaryMessage, p)
}

func (c wsConn) read(int) ([]byte, error) {
	_, p, err := c.ReadMessage()
	return p, err
}

// close is the closing handshake: a close frame, then the server's (within a second).
func (c wsConn) close() {
	soon := time.Now().Add(time.Second)
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), soon)
	c.SetReadDeadline(soon)
	for {
		if _, _, err := c.NextReader(); err != nil {
			break
		}
	}
	c.Close()
}

type tcpConn struct{ net.Conn }

func (c tcpConn) write(p []byte, _ bool) error {
	_, err := c.Write(p)
	return err
}

func (c tcpConn) read(n int) ([]byte, error) {
	p := make([]byte, n)
	_, err := io.ReadFull(c, p)
	return p, err
}

func (c tcpConn) close() { c.Close() }

// dial opens one connection (Go sets TCP_NODELAY on every TCP connection).
func dial() (echoConn, error) {
	until := time.Now().Add(deadline)
	if strings.HasPrefix(*url, "tcp://") {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(*url, "tcp://"), deadline)
		if err != nil {
			return nil, err
		}
		conn.SetDeadline(until)
		return tcpConn{conn}, nil
	}
	dialer := websocket.Dialer{
		ReadBufferSize: 65536, WriteBufferSize: 65536, HandshakeTimeout: deadline, EnableCompression: *compress,
	}
	conn, resp, err := dialer.Dial(*url, nil)
	if err != nil {
		return nil, err
	}
	if *compress && resp.Header.Get("Sec-WebSocket-Extensions") == "" {
		conn.Close()
		return nil, fmt.Errorf("%s did not agree to permessage-deflate", *url)
	}
	conn.SetReadDeadline(until)
	conn.SetWriteDeadline(until)
	return wsConn{conn}, nil
}

func mustDial() echoConn {
	conn, err := dial()
	if err != nil {
		log.Fatal("dial: ", err)
	}
	return conn
}

// roundTrip sends p and checks that the echo is p.
func roundTrip(conn echoConn, p []byte, text bool) error {
	if err := conn.write(p, text); err != nil {
		return err
	}
	return expect(conn, p)
}

// expect reads the next message and checks that it is p.
func expect(conn echoConn, p []byte) error {
	got, err := conn.read(len(p))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("expected %.70q, got %.70q", p, got)
	}
	return nil
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func median(times []time.Duration) time.Duration {
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[len(times)/2]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func rtt(results map[string]float64) {
	conn := mustDial()
	defer conn.close()
	message := bytes.Repeat([]byte("x"), 32)
	times := make([]time.Duration, *rounds)
	for i := range times {
		start := time.Now()
		must(roundTrip(conn, message, true))
		times[i] = time.Since(start)
	}
	results["rtt_p50_us"] = micros(median(times))
	results["rtt_p99_us"] = micros(times[len(times)*99/100])
}

func secondOfTwo(results map[string]float64) {
	conn := mustDial()
	defer conn.close()
	first, second := []byte("first message..."), []byte("second message..")
	times := make([]time.Duration, *backToBack)
	for i := range times {
		must(conn.write(first, true))
		start := time.Now()
		must(conn.write(second, true))
		must(expect(conn, first))
		must(expect(conn, second))
		times[i] = time.Since(start)
	}
	results["second_rtt_p50_us"] = micros(median(times))
}

func throughput(results map[string]float64) {
	conn := mustDial()
	defer conn.close()
	done := make(chan error)
	start := time.Now()
	go func() { // the reader checks every echo, in order
		for i := 0; i < *messages; i++ {
			if err := expect(conn, []byte(fmt.Sprintf("%064d", i))); err != nil {
				done <- fmt.Errorf("message %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < *messages; i++ {
		must(conn.write([]byte(fmt.Sprintf("%064d", i)), true))
	}
	must(<-done)
	results["msgs_per_s"] = float64(*messages) / time.Since(start).Seconds()
}

func largeEcho(results map[string]float64) {
	conn := mustDial()
	defer conn.close()
	data := make([]byte, 1<<20)
	rand.Read(data)
	start := time.Now()
	for i := 0; i < *large; i++ {
		// Written while the echo is read: a plain TCP echo sends the start back
		// before the end has arrived, and would fill both ways' buffers.
		written := make(chan error, 1)
		go func() { written <- conn.write(data, false) }()
		must(expect(conn, data))
		must(<-written)
	}
	results["mb_per_s"] = float64(*large) * float64(len(data)) / time.Since(start).Seconds() / 1e6
}

// concurrent dials -conns connections at once, waits until every dial is
// done, then makes 20 round trips of 32 bytes on each, all together. The
// time is from the first dial to the last close; dial_seconds, from the first
// dial to the last one done.
func concurrent(results map[string]float64) {
	var dialed, finished sync.WaitGroup
	begin := make(chan struct{})
	var completed int64
	message := bytes.Repeat([]byte("x"), 32)
	start := time.Now()
	for i := 0; i < *conns; i++ {
		dialed.Add(1)
		finished.Add(1)
		go func() {
			defer finished.Done()
			conn, err := dial()
			dialed.Done()
			if err != nil {
				return
			}
			defer conn.close()
			<-begin
			for j := 0; j < 20; j++ {
				if roundTrip(conn, message, true) != nil {
					return
				}
			}
			atomic.AddInt64(&completed, 1)
		}()
	}
	dialed.Wait()
	dialedAt := time.Since(start).Seconds()
	close(begin)
	finished.Wait()
	prefix := fmt.Sprintf("c%d_", *conns)
	results[prefix+"dial_seconds"] = dialedAt
	results[prefix+"completed"] = float64(completed)
	results[prefix+"seconds"] = time.Since(start).Seconds()
}

// echoTCP serves a plain TCP echo, a goroutine per connection.
func echoTCP(addr string) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal("listen: ", err)
	}
	fmt.Printf("listening on tcp://%s\n", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			log.Fatal("accept: ", err)
		}
		go func() {
			defer conn.Close()
			buf := make([]byte, 65536)
			for {
				n, err := conn.Read(buf)
				if _, werr := conn.Write(buf[:n]); werr != nil || err != nil {
					return
				}
			}
		}()
	}
}

var workloads = map[string]func(map[string]float64){
	"rtt":        rtt,
	"backtoback": secondOfTwo,
	"pipelined":  throughput,
	"large":      largeEcho,
	"conns":      concurrent,
}

func main() {
	flag.Parse()
	if *serveTCP != "" {
		echoTCP(*serveTCP)
	}
	var run []func(map[string]float64)
	for _, name := range strings.Split(*only, ",") {
		workload, ok := workloads[name]
		if !ok {
			log.Fatalf("unknown workload %q (rtt, backtoback, pipelined, large, conns)", name)
		}
		run = append(run, workload)
	}
	results := map[string]float64{}
	for _, workload := range run {
		workload(results)
	}
	json.NewEncoder(os.Stdout).Encode(results)
}

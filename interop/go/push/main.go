// Command push is the scale run's push peer (bench/scale.py): N subscribers
// that connect and only read, or a gorilla hub that broadcasts to them.
//
// As subscribers it dials N connections at once, prints "connected N" when
// they are all open, and reads. Every message is "SEQ UNIX_NANOS" (the
// server's clock at its send call): each connection must get 1, 2, 3, ...
// once and in order, and the delivery latency is the read time minus that
// clock (one machine, one clock). When every connection has its -messages
// messages, or -timeout passes, it prints one JSON object of figures. With
// -hold it then keeps every connection open until the server closes it (or
// -timeout passes again), and prints a second JSON object: how many were
// closed with which code (0: no close frame).
//
//	push -url ws://127.0.0.1:8080/ws -conns 1000 -messages 20
//
// With -serve it is the Go side of the comparison instead: the chat example's
// hub (a writer goroutine per client behind a buffered channel, a client
// whose channel is full is dropped), which broadcasts -messages messages
// every -interval once -wait-for clients are connected, then keeps serving.
//
//	push -serve 127.0.0.1:0 -wait-for 1000 -messages 20 -interval 500ms
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

var (
	url      = flag.String("url", "ws://127.0.0.1:8080/ws", "subscribers: the server to read from")
	conns    = flag.Int("conns", 1000, "subscribers: connections to open at once")
	messages = flag.Int("messages", 20, "messages each subscriber must get (-serve: to broadcast)")
	timeout  = flag.Duration("timeout", 120*time.Second, "subscribers: give up reading after this long")
	dialWait = flag.Duration("dial-timeout", 30*time.Second, "subscribers: give up a dial after this long")
	serve    = flag.String("serve", "", "be the gorilla hub on this address instead (port 0: any free port)")
	waitFor  = flag.Int("wait-for", 1, "-serve: clients to wait for before broadcasting")
	interval = flag.Duration("interval", 500*time.Millisecond, "-serve: time between two broadcasts")
	hold     = flag.Bool("hold", false, "subscribers: after the figures, keep the connections until the server closes them, then print how they were closed")
)

// subscriber is what one connection saw.
type subscriber struct {
	got       int // messages in order so far
	wrong     int // messages out of order, repeated or malformed
	latencies []time.Duration
}

func (s *subscriber) read(conn *websocket.Conn) {
	for s.got < *messages {
		_, data, err := conn.ReadMessage()
		now := time.Now()
		if err != nil {
			return
		}
		fields := strings.Fields(string(data)) // SEQ UNIX_NANOS [PADDING]
		if len(fields) < 2 {
			s.wrong++
			continue
		}
		seq, err1 := strconv.Atoi(fields[0])
		sent, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil || seq != s.got+1 {
			s.wrong++
			continue
		}
		s.got++
		s.latencies = append(s.latencies, now.Sub(time.Unix(0, sent)))
	}
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1e3
}

func subscribe() {
	dialer := websocket.Dialer{HandshakeTimeout: *dialWait}
	subs := make([]*subscriber, *conns)
	open := make([]*websocket.Conn, *conns)
	var dialed sync.WaitGroup
	var failed int64
	start := time.Now()
	for i := range subs {
		subs[i] = &subscriber{}
		dialed.Add(1)
		go func(i int) {
			defer dialed.Done()
			conn, _, err := dialer.Dial(*url, nil)
			if err != nil {
				if atomic.AddInt64(&failed, 1) == 1 {
					log.Printf("dial: %v", err)
				}
				return
			}
			open[i] = conn
		}(i)
	}
	dialed.Wait()
	connectSeconds := time.Since(start).Seconds()
	connected := *conns - int(failed)
	fmt.Printf("connected %d\n", connected)
	os.Stdout.Sync()

	var read sync.WaitGroup
	deadline := time.Now().Add(*timeout)
	for i, conn := range open {
		if conn == nil {
			continue
		}
		conn.SetReadDeadline(deadline)
		read.Add(1)
		go func(s *subscriber, conn *websocket.Conn) {
			defer read.Done()
			s.read(conn)
		}(subs[i], conn)
	}
	read.Wait()
	var all []time.Duration
	complete, wrong, deliveries := 0, 0, 0
	for i, s := range subs {
		if open[i] == nil {
			continue
		}
		if !*hold {
			open[i].Close()
		}
		if s.got == *messages {
			complete++
		}
		wrong += s.wrong
		deliveries += s.got
		all = append(all, s.latencies...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	json.NewEncoder(os.Stdout).Encode(map[string]float64{
		"connected":       float64(connected),
		"connect_seconds": connectSeconds,
		"complete":        float64(complete),
		"deliveries":      float64(deliveries),
		"wrong":           float64(wrong),
		"p50_ms":          percentile(all, 0.50),
		"p99_ms":          percentile(all, 0.99),
		"max_ms":          percentile(all, 1.0),
	})
	if *hold {
		closes(open)
	}
}

// closes waits until the server has closed every connection; how, by code.
func closes(open []*websocket.Conn) {
	var mu sync.Mutex
	codes := map[string]float64{}
	var ended sync.WaitGroup
	deadline := time.Now().Add(*timeout)
	for _, conn := range open {
		if conn == nil {
			continue
		}
		ended.Add(1)
		go func(conn *websocket.Conn) {
			defer ended.Done()
			defer conn.Close()
			conn.SetReadDeadline(deadline)
			for {
				_, _, err := conn.ReadMessage()
				if err == nil {
					continue
				}
				code := "0"
				if closeErr, ok := err.(*websocket.CloseError); ok {
					code = strconv.Itoa(closeErr.Code)
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
				return
			}
		}(conn)
	}
	ended.Wait()
	json.NewEncoder(os.Stdout).Encode(codes)
}

// The hub, in the chat example's pattern.

type hub struct {
	mu      sync.Mutex
	clients map[chan []byte]bool
	joined  chan struct{}
}

func (h *hub) handle(w http.ResponseWriter, r *http.Request) {
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	send := make(chan []byte, 256)
	h.mu.Lock()
	h.clients[send] = true
	if len(h.clients) == *waitFor {
		close(h.joined)
	}
	h.mu.Unlock()
	go func() { // the write pump
		defer conn.Close()
		for message := range send {
			conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if conn.WriteMessage(websocket.TextMessage, message) != nil {
				return
			}
		}
	}()
	go func() { // the read pump
		defer func() {
			h.mu.Lock()
			if h.clients[send] {
				delete(h.clients, send)
				close(send)
			}
			h.mu.Unlock()
		}()
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
}

func (h *hub) broadcast(message []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for send := range h.clients {
		select {
		case send <- message:
		default: // too slow: dropped
			delete(h.clients, send)
			close(send)
		}
	}
}

func serveHub() {
	h := &hub{clients: map[chan []byte]bool{}, joined: make(chan struct{})}
	listener, err := net.Listen("tcp", *serve)
	if err != nil {
		log.Fatal("listen: ", err)
	}
	fmt.Printf("listening on ws://%s/ws\n", listener.Addr())
	os.Stdout.Sync()
	go func() {
		<-h.joined
		for seq := 1; seq <= *messages; seq++ {
			time.Sleep(*interval)
			h.broadcast([]byte(fmt.Sprintf("%d %d", seq, time.Now().UnixNano())))
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", h.handle)
	log.Fatal(http.Serve(listener, mux))
}

func main() {
	flag.Parse()
	if *serve != "" {
		serveHub()
		return
	}
	subscribe()
}

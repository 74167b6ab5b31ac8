// Command server is the article's WebSocket server, with flags and a clean
// close: the Go peer our Python client is tested against.
//
//	server -addr localhost:8080 -count 5 -interval 1s [-echo] [-quiet]
//
// It upgrades /ws, starts a goroutine that reads and prints every message,
// and sends -count messages -interval apart; with -echo it sends every
// message back instead (text as text, binary as binary). It prints
// "listening on ws://ADDR/ws" once it accepts connections.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/gorilla/websocket"
)

var (
	addr     = flag.String("addr", "localhost:8080", "address to listen on (port 0: any free port)")
	count    = flag.Int("count", 5, "messages to send to each client")
	interval = flag.Duration("interval", time.Second, "pause between two messages")
	echo     = flag.Bool("echo", false, "send every message back instead of sending our own")
	quiet    = flag.Bool("quiet", false, "do not print every message (for benchmarks)")
	compress = flag.Bool("compression", false, "accept permessage-deflate when a client offers it")
)

// The default CheckOrigin accepts requests without Origin and same-origin ones.
var upgrader = websocket.Upgrader{ReadBufferSize: 65536, WriteBufferSize: 65536}

// describe renders a message as the Python programs print it.
func describe(messageType int, p []byte) string {
	if messageType == websocket.TextMessage {
		return string(p)
	}
	return fmt.Sprintf("<binary message, %d bytes, sha256 %x>", len(p), sha256.Sum256(p))
}

// reader is the article's reading goroutine: print every message until the
// peer closes (echoing it with -echo), then close done.
func reader(conn *websocket.Conn, done chan struct{}) {
	defer close(done)
	for {
		messageType, p, err := conn.ReadMessage()
		if err != nil {
			if closeErr, ok := err.(*websocket.CloseError); ok {
				log.Printf("closed: %d %s", closeErr.Code, closeErr.Text)
			} else {
				log.Println("read:", err)
			}
			return
		}
		if !*quiet {
			log.Printf("received: %s", describe(messageType, p))
		}
		if *echo {
			if err := conn.WriteMessage(messageType, p); err != nil {
				log.Println("write:", err)
				return
			}
		}
	}
}

func serveWs(w http.ResponseWriter, r *http.Request) {
	upgrader.EnableCompression = *compress
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Println("upgrade:", err)
		return
	}
	defer conn.Close()
	done := make(chan struct{})
	go reader(conn, done)
	if !*echo {
		for i := 1; i <= *count; i++ {
			message := fmt.Sprintf("go server message %d of %d", i, *count)
			if err := conn.WriteMessage(websocket.TextMessage, []byte(message)); err != nil {
				log.Println("write:", err)
				break
			}
			log.Printf("sent: %s", message)
			if i == *count {
				break
			}
			select {
			case <-done:
				return
			case <-time.After(*interval):
			}
		}
	}
	<-done // the client closes; gorilla answers its close frame
}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetOutput(os.Stdout)
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal("listen:", err)
	}
	http.HandleFunc("/ws", serveWs)
	fmt.Printf("listening on ws://%s/ws\n", listener.Addr())
	log.Fatal(http.Serve(listener, nil))
}

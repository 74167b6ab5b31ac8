// Command client is the article's WebSocket client, with flags and a clean
// close: the Go peer our Python server is tested against.
//
//	client -url ws://localhost:8080/ws -count 5 -interval 1s [-echo] [-big N] [-linger 3s]
//
// It dials, starts a goroutine that reads and prints every message (echoing
// it with -echo), sends -count messages -interval apart (and with -big one
// binary message of N bytes), then closes with 1000 once the server has
// been quiet for -linger, as sync_client.py does.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

var (
	url      = flag.String("url", "ws://localhost:8080/ws", "server URL")
	count    = flag.Int("count", 5, "messages to send")
	interval = flag.Duration("interval", time.Second, "pause between two messages")
	echo     = flag.Bool("echo", false, "send every message received back, and nothing of our own")
	big      = flag.Int("big", 0, "also send one binary message of this many bytes")
	linger   = flag.Duration("linger", 3*time.Second, "close after this long without a message")
	compress = flag.Bool("compression", false, "offer permessage-deflate")
)

// describe renders a message as the Python programs print it.
func describe(messageType int, p []byte) string {
	if messageType == websocket.TextMessage {
		return string(p)
	}
	return fmt.Sprintf("<binary message, %d bytes, sha256 %x>", len(p), sha256.Sum256(p))
}

// reader is "the exact same as on the server": print every message until
// the connection closes, then close done. Each message is also signalled on
// activity, so the main goroutine knows when the server went quiet.
func reader(conn *websocket.Conn, done chan struct{}, activity chan struct{}) {
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
		log.Printf("received: %s", describe(messageType, p))
		select {
		case activity <- struct{}{}:
		default:
		}
		if *echo {
			if err := conn.WriteMessage(messageType, p); err != nil {
				log.Println("write:", err)
				return
			}
		}
	}
}

// pattern is the -big message: deterministic, so a test can check its hash.
func pattern(size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i % 251)
	}
	return p
}

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetOutput(os.Stdout)
	interrupt := make(chan os.Signal, 1)
	signal.Notify(interrupt, os.Interrupt, syscall.SIGTERM)

	dialer := *websocket.DefaultDialer
	dialer.EnableCompression = *compress
	conn, resp, err := dialer.Dial(*url, nil)
	if err != nil {
		log.Fatal("dial:", err)
	}
	defer conn.Close()
	log.Printf("connected to %s %s", *url, resp.Header.Get("Sec-WebSocket-Extensions"))

	done := make(chan struct{})
	activity := make(chan struct{}, 1)
	go reader(conn, done, activity)

	if *echo {
		// The reader writes the echoes; gorilla allows one writer at a time.
		*count, *big = 0, 0
	}
	for i := 1; i <= *count; i++ {
		message := fmt.Sprintf("go client message %d of %d", i, *count)
		if err := conn.WriteMessage(websocket.TextMessage, []byte(message)); err != nil {
			log.Fatal("write:", err)
		}
		log.Printf("sent: %s", message)
		if i < *count {
			select {
			case <-done:
				return
			case <-interrupt:
				closeAndWait(conn, done)
				return
			case <-time.After(*interval):
			}
		}
	}
	if *big > 0 {
		p := pattern(*big)
		if err := conn.WriteMessage(websocket.BinaryMessage, p); err != nil {
			log.Fatal("write:", err)
		}
		log.Printf("sent: %s", describe(websocket.BinaryMessage, p))
	}
	for {
		select {
		case <-done: // the server closed
			return
		case <-activity:
		case <-interrupt:
			closeAndWait(conn, done)
			return
		case <-time.After(*linger):
			closeAndWait(conn, done)
			return
		}
	}
}

// closeAndWait sends a close frame with 1000 and waits, bounded, for the
// server's answer (gorilla's echo client does the same).
func closeAndWait(conn *websocket.Conn, done chan struct{}) {
	message := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := conn.WriteMessage(websocket.CloseMessage, message); err != nil {
		log.Println("write close:", err)
		return
	}
	select {
	case <-done:
	case <-time.After(time.Second):
	}
}

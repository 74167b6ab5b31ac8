// Command goroutines starts -n goroutines that each block on a channel, and
// prints how long that took and the memory it cost, as JSON (for
// bench/threads_vs_goroutines.py).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

func rssKiB() int {
	file, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		if fields := strings.Fields(scanner.Text()); len(fields) > 1 && fields[0] == "VmRSS:" {
			kib, _ := strconv.Atoi(fields[1])
			return kib
		}
	}
	return 0
}

func main() {
	n := flag.Int("n", 1000, "goroutines to start")
	flag.Parse()
	runtime.GC()
	before := rssKiB()
	done := make(chan struct{})
	var started, finished sync.WaitGroup
	started.Add(*n)
	finished.Add(*n)
	start := time.Now()
	for i := 0; i < *n; i++ {
		go func() {
			started.Done()
			<-done // blocked, like a reader waiting for a message
			finished.Done()
		}()
	}
	started.Wait()
	elapsed := time.Since(start)
	after := rssKiB()
	close(done)
	finished.Wait()
	json.NewEncoder(os.Stdout).Encode(map[string]float64{
		"start_ms":     float64(elapsed.Microseconds()) / 1e3,
		"kib_per_unit": float64(after-before) / float64(*n),
	})
}

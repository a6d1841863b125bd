// A Go net/http server on baton's socket (README "Frameworks"; by hand:
// tests/it/frameworks.rs, `-- --ignored`), built offline against Debian's
// golang-github-coreos-go-systemd-dev (GO111MODULE=off,
// GOPATH=/usr/share/gocode).
//
//   - The socket: activation.Listeners() (LISTEN_FDS, LISTEN_PID).
//   - Readiness: daemon.SdNotify(false, daemon.SdNotifyReady) once serving
//     (baton's mode = "notify").
//   - Stop: SIGTERM → http.Server.Shutdown: it closes the listener (baton
//     keeps its copy, queued connections wait for the next generation),
//     lets requests in progress finish and closes idle connections.
//   - GET / answers "hello from generation G pid P"; BROKEN_RELEASE makes
//     it exit 1 before READY=1 (the broken release).
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/activation"
	"github.com/coreos/go-systemd/daemon"
)

func main() {
	if os.Getenv("BROKEN_RELEASE") != "" {
		log.Fatal("this release is broken (BROKEN_RELEASE is set)")
	}
	listeners, err := activation.Listeners()
	if err != nil || len(listeners) == 0 {
		log.Fatalf("no inherited socket (LISTEN_FDS): %v", err)
	}
	generation := os.Getenv("BATON_GENERATION")
	body := fmt.Sprintf("hello from generation %s pid %d\n", generation, os.Getpid())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, body)
	})}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(done)
	}()
	go func() {
		if sent, err := daemon.SdNotify(false, daemon.SdNotifyReady); !sent {
			log.Printf("READY=1 not sent: %v", err)
		}
	}()
	log.Printf("serving on baton's socket %s", listeners[0].Addr())
	if err := srv.Serve(listeners[0]); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}

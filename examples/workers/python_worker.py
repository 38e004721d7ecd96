#!/usr/bin/env python3
"""A reeve worker in Python, standard library only.

It speaks the worker protocol of `reeve serve` (docs/api.md), the same one
the reference worker (`reeve worker`) speaks:

1. Register: POST /v1/workers/register with the worker token as bearer;
   the answer names this worker's id.
2. Claim: POST /v1/workers/{id}/claim {"limit", "wait_ms"} long-polls for
   jobs of our kind. Each claimed run comes with its job, a job token
   ("rjt_...", good for that run only) and whether it has a checkpoint.
3. Run it: the handler may GET /v1/jobs/{job}/checkpoint to resume and PUT
   new checkpoints there (raw bytes, the job token as bearer).
4. Heartbeat: while runs are in hand, a background thread POSTs
   /v1/workers/{id}/heartbeat every second with each run's job, epoch and
   progress. An answer other than "ok" stops the run: "cancel_requested" is
   reported as a cancelled failure, "turn_limit_exceeded" and "lease_lost"
   (or a lease that ran out without a heartbeat getting through) are not
   reported at all: the run is no longer ours to write.
5. Write back: POST /v1/workers/{id}/complete {"job", "epoch", "result"} or
   /fail {"job", "epoch", "reason", "error"}. Both are fenced on the epoch.
6. Deregister: POST /v1/workers/{id}/deregister on SIGTERM, Ctrl-C, or after
   the one job of --once. The daemon releases whatever we still held.

Usage:
    python3 python_worker.py --url URL --token-env VAR --kind KIND
                             [--slots N] [--name NAME] [--once]
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

CLAIM_WAIT_MS = 10_000  # one long-poll (the daemon caps it at 30 s)
HEARTBEAT_EVERY = 1.0  # seconds, well within any lease


def log(msg):
    print(f"python-worker: {msg}", file=sys.stderr, flush=True)


class Refused(Exception):
    """The daemon refused the request (a 4xx answer)."""

    def __init__(self, status, body):
        super().__init__(f"{status}: {body}")
        self.status = status


class Stopped(Exception):
    """The run must stop (raised inside handlers by Run.check)."""


def call(base, method, path, token, body=None, raw=None, timeout=10.0):
    """One request; JSON in and out (raw bytes for checkpoints)."""
    data = json.dumps(body).encode() if body is not None else raw
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    elif raw is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
            json_answer = "json" in resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        if e.code >= 500:  # the daemon is in trouble: like a network error
            raise OSError(f"{path}: the daemon answered {e.code}") from None
        raise Refused(e.code, e.read().decode(errors="replace")) from None
    return json.loads(payload) if json_answer else payload


class Run:
    """One claimed job: what its handler, the heartbeat thread and the
    write-back share."""

    def __init__(self, worker, claimed):
        self.worker = worker
        self.job = claimed["job"]
        self.id, self.epoch = self.job["id"], self.job["epoch"]
        self.token = claimed["token"]  # the job token of this claim
        self.has_checkpoint = claimed["checkpoint"]
        self.note = None  # progress for the next heartbeat
        self.deadline = None  # local lease deadline (monotonic), once known
        self.why = None  # why we stopped: None while it is ours to finish
        self.stopping = threading.Event()

    def stop(self, why):
        if self.why is None:
            self.why = why
        self.stopping.set()

    # The handler's side.
    def ours(self):
        """Whether the run is still ours to continue and write back."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stop("lease_lost")  # no heartbeat got through in time
        return self.why is None

    def check(self):
        """Raises Stopped once the run is no longer ours."""
        if not self.ours():
            raise Stopped(self.why)

    def pause(self, seconds):
        """Sleeps, waking at once if the run is stopped."""
        self.stopping.wait(seconds)
        self.check()

    def progress(self, note):
        self.note = note

    def load_checkpoint(self):
        """The saved checkpoint's bytes, or None (GET, the job token as bearer)."""
        if not self.has_checkpoint:
            return None
        return call(self.worker.base, "GET", f"/v1/jobs/{self.id}/checkpoint", self.token)

    def save_checkpoint(self, data):
        """Saves `data` for a later attempt (PUT, fenced by the job token's epoch)."""
        self.check()
        try:
            call(self.worker.base, "PUT", f"/v1/jobs/{self.id}/checkpoint", self.token, raw=data)
        except Refused as e:
            if e.status == 409:  # a newer epoch holds the job
                self.stop("lease_lost")
            raise


def py_sum(run, payload):
    """The example handler: sums payload["numbers"], one number a step,
    checkpointing {"next", "sum"} after each and resuming from it."""
    numbers = payload["numbers"]
    delay = payload.get("delay_ms", 300) / 1000
    start, total = 0, 0
    saved = run.load_checkpoint()
    if saved is not None:
        state = json.loads(saved)
        start, total = state["next"], state["sum"]
        log(f"job {run.id}: resuming at number {start}, sum so far {total}")
    resumed_from = total
    for i in range(start, len(numbers)):
        run.pause(delay)  # stands in for real work
        total += numbers[i]
        run.progress(f"{i + 1}/{len(numbers)} summed")
        run.save_checkpoint(json.dumps({"next": i + 1, "sum": total}).encode())
    return {"sum": total, "resumed_from": resumed_from}


HANDLERS = {"py-sum": py_sum}


class Worker:
    def __init__(self, base, token, kind, slots, name):
        self.base, self.token, self.kind, self.slots = base, token, kind, slots
        self.name = name
        self.id = None
        self.active = {}  # job id -> Run
        self.cond = threading.Condition()  # guards active; signals a free slot
        self.quit = threading.Event()

    def api(self, path, body=None, timeout=10.0):
        path = f"/v1/workers/{self.id}/{path}"
        return call(self.base, "POST", path, self.token, body, timeout=timeout)

    def register(self):
        answer = call(self.base, "POST", "/v1/workers/register", self.token, {
            "name": self.name, "host": socket.gethostname(), "kinds": [self.kind],
            "slots": self.slots, "heartbeats": True, "version": "python-example",
        })
        self.id = answer["worker"]["id"]
        log(f"registered as {self.id}")

    def claim(self, limit):
        """Long-polls for up to `limit` runs, retrying while the daemon is away."""
        delay = 0.2
        while True:
            try:
                body = {"limit": limit, "wait_ms": CLAIM_WAIT_MS}
                answer = self.api("claim", body, timeout=CLAIM_WAIT_MS / 1000 + 10)
                return [Run(self, r) for r in answer["runs"]]
            except OSError as e:  # URLError and timeouts included
                log(f"the daemon is away ({e}); retrying")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def heartbeats(self):
        """Beats every run in hand each second; stops those no longer ours."""
        while not self.quit.wait(HEARTBEAT_EVERY):
            with self.cond:
                runs = list(self.active.values())
            if not runs:
                continue
            beats = [{"job": r.id, "epoch": r.epoch} for r in runs]
            for beat, r in zip(beats, runs):
                if r.note is not None:
                    beat["progress"] = r.note
            sent = time.monotonic()
            try:
                answer = self.api("heartbeat", {"runs": beats}, timeout=2.0)
            except Refused as e:
                log(f"heartbeat refused ({e}); treating the leases as lost")
                for r in runs:
                    r.stop("lease_lost")
                continue
            except OSError as e:
                log(f"heartbeat did not get through: {e}")
                continue
            by_id = {r.id: r for r in runs}
            for a in answer["runs"]:
                r = by_id.get(a["job"])
                if r is None:
                    continue
                if a["status"] == "ok":
                    r.deadline = sent + a["lease_remaining_ms"] / 1000
                else:
                    log(f"job {r.id}: the daemon says {a['status']}; stopping")
                    r.stop(a["status"])

    def run_one(self, run):
        """Runs one job to its end and writes back, unless it is not ours."""
        try:
            result = HANDLERS[run.job["kind"]](run, run.job["payload"])
            path, body = "complete", {"result": result}
        except Exception as e:  # Stopped, or the handler failed (retryable)
            path, body = "fail", {"reason": "error", "error": f"{type(e).__name__}: {e}"}
        if run.why == "cancel_requested":
            path, body = "fail", {"reason": "cancelled", "error": "cancelled by an operator"}
        elif not run.ours():  # lease_lost, turn_limit_exceeded, shutdown
            log(f"job {run.id}: stopped ({run.why}); nothing written back")
            path = None
        try:
            if path is not None:
                self.api(path, {"job": run.id, "epoch": run.epoch, **body})
                log(f"job {run.id}: {path} written back")
        except (Refused, OSError) as e:
            log(f"job {run.id}: write-back not accepted: {e}")
        finally:
            with self.cond:
                del self.active[run.id]
                self.cond.notify_all()

    def serve(self, once):
        beats = threading.Thread(target=self.heartbeats, daemon=True)
        beats.start()
        while True:
            with self.cond:  # wait for a free slot (interruptible)
                while len(self.active) >= self.slots:
                    self.cond.wait(1.0)
                free = self.slots - len(self.active)
            runs = self.claim(1 if once else free)
            threads = []
            for run in runs:
                with self.cond:
                    self.active[run.id] = run
                log(f"claimed job {run.id} (epoch {run.epoch}, checkpoint: {run.has_checkpoint})")
                t = threading.Thread(target=self.run_one, args=(run,), daemon=True)
                t.start()
                threads.append(t)
            if once and threads:
                while threads[0].is_alive():  # join in slices: stays interruptible
                    threads[0].join(0.2)
                return

    def shutdown(self):
        """Stops what still runs (nothing written back) and deregisters."""
        with self.cond:
            for run in self.active.values():
                run.stop("shutdown")
        self.quit.set()
        if self.id is not None:
            try:
                self.api("deregister")
                log(f"deregistered {self.id}")
            except (Refused, OSError) as e:
                log(f"deregistration failed: {e}")


def on_sigterm(signum, frame):
    raise KeyboardInterrupt  # handled like Ctrl-C: drop everything, deregister


def main():
    p = argparse.ArgumentParser(description="A reeve worker in Python.")
    p.add_argument("--url", required=True, help="the daemon, e.g. http://127.0.0.1:8080")
    p.add_argument("--token-env", required=True, help="the variable holding the worker token")
    p.add_argument("--kind", required=True, help="the job kind to run")
    p.add_argument("--slots", type=int, default=1, help="jobs run at once")
    p.add_argument("--name", default=f"python-worker-{os.getpid()}")
    p.add_argument("--once", action="store_true", help="handle exactly one job, then leave")
    args = p.parse_args()
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        p.error(f"--token-env: the variable {args.token_env} is not set")
    if args.kind not in HANDLERS:
        p.error(f"--kind: no handler for {args.kind!r} (have: {', '.join(HANDLERS)})")
    if not 1 <= args.slots <= 1000:
        p.error("--slots: must be between 1 and 1000")
    signal.signal(signal.SIGTERM, on_sigterm)
    worker = Worker(args.url.rstrip("/"), token, args.kind, args.slots, args.name)
    try:
        worker.register()
        worker.serve(args.once)
        return 0
    except KeyboardInterrupt:
        log("stopping")
        return 0
    except Refused as e:
        log(f"the daemon refused: {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the goodbye finish
        worker.shutdown()


if __name__ == "__main__":
    sys.exit(main())

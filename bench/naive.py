"""The naive baseline: what a tutorial writes, as its own process.

A loop that takes the next window of samples from the recording, quantises it, invokes,
reads and dequantises the output, ``json.dumps`` the result and calls paho ``publish``
once per prediction at QoS 1. paho's defaults (its own network thread via ``loop_start``,
20 messages in flight, an unbounded in-memory queue, Nagle on); no spool, no sequence
persistence, no metrics, no health checks, nothing survives a restart.

    .venv/bin/python -m bench.naive MODEL SAMPLES --length L --hop H --port P --topic T
        --windows N [--rate R]

``--rate`` paces the loop (windows per second, sleeping to each deadline); without it the
loop runs flat out. Prints ``ready`` once connected, then one JSON line when every publish
is acknowledged.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import paho.mqtt.client as mqtt
from ai_edge_litert.interpreter import Interpreter
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    ap = argparse.ArgumentParser(description="naive inference + publish loop")
    ap.add_argument("model")
    ap.add_argument("samples")
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--hop", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--windows", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    interpreter = Interpreter(model_path=args.model, num_threads=args.threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    data = np.load(args.samples)
    available = (len(data) - args.length) // args.hop + 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(args.host, args.port)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    print("ready", flush=True)

    info = None
    t0 = time.monotonic()
    wall0 = time.time() - (time.monotonic() - t0)  # the wall time at t0
    for i in range(args.windows):
        if args.rate:
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # the window's last sample is due now: latency counts from here, as the agent's
            # does (its replay stamps a window with its last sample's due time), so both pay
            # for waking up late
            t_in = wall0 + i / args.rate
        else:
            t_in = time.time()  # the window's last sample is "read" now
        k = (i % available) * args.hop
        window = data[k : k + args.length]
        x = np.clip(np.round(window / in_scale + in_zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x.reshape(inp["shape"]))
        interpreter.invoke()
        y = (interpreter.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale
        best = int(np.argmax(y))
        result = {"seq": i, "ts": t_in, "label": best, "score": float(y.flat[best])}
        info = client.publish(args.topic, json.dumps(result), qos=1)
    if info is not None:
        info.wait_for_publish()
    elapsed = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"windows": args.windows, "elapsed_s": elapsed}), flush=True)


if __name__ == "__main__":
    main()

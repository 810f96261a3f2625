#!/usr/bin/env python3
"""Read an MPU-6050 (accelerometer + gyroscope) over I2C and print samples for edge-agent.

A ``command`` source runs this script and reads its standard output: one JSON line per batch
of samples, ``[{"values": [ax, ay, az, gx, gy, gz], "ts": 1712345678.123}, ...]``, with
acceleration in g and rotation in degrees per second (``--channels 3``: acceleration only).
Wiring and the agent's config: README.md next to this file.

No dependencies: it talks to ``/dev/i2c-<bus>`` with the kernel's I2C_SLAVE ioctl. With
``smbus2`` installed it can use that instead (``--smbus2``). Errors go to stderr (the agent
logs them) and end the script with exit code 1: the agent restarts it with a backoff.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

ADDRESS = 0x68  # AD0 to GND; 0x69 with AD0 to VCC
WHO_AM_I = 0x75
PWR_MGMT_1 = 0x6B
SMPLRT_DIV = 0x19
CONFIG = 0x1A
GYRO_CONFIG = 0x1B
ACCEL_CONFIG = 0x1C
ACCEL_XOUT_H = 0x3B  # 14 bytes: accel x/y/z, temperature, gyro x/y/z (big-endian int16)
KNOWN_IDS = {0x68: "MPU-6050", 0x70: "MPU-6500", 0x71: "MPU-9250", 0x98: "clone"}

ACCEL_RANGES = {2: (0x00, 16384.0), 4: (0x08, 8192.0), 8: (0x10, 4096.0), 16: (0x18, 2048.0)}
GYRO_RANGES = {250: (0x00, 131.0), 500: (0x08, 65.5), 1000: (0x10, 32.8), 2000: (0x18, 16.4)}
I2C_SLAVE = 0x0703


class Bus(Protocol):
    """The two SMBus calls used (smbus2.SMBus has them; so does ``LinuxI2C``)."""

    def write_byte_data(self, addr: int, register: int, value: int) -> None: ...
    def read_i2c_block_data(self, addr: int, register: int, length: int) -> list[int]: ...


class LinuxI2C:
    """``/dev/i2c-N`` with plain reads and writes (no library needed)."""

    def __init__(self, bus: int) -> None:
        self.fd = os.open(f"/dev/i2c-{bus}", os.O_RDWR)
        self._addr: int | None = None

    def _select(self, addr: int) -> None:
        if addr != self._addr:
            fcntl.ioctl(self.fd, I2C_SLAVE, addr)
            self._addr = addr

    def write_byte_data(self, addr: int, register: int, value: int) -> None:
        self._select(addr)
        os.write(self.fd, bytes([register, value]))

    def read_i2c_block_data(self, addr: int, register: int, length: int) -> list[int]:
        self._select(addr)
        os.write(self.fd, bytes([register]))
        data = os.read(self.fd, length)
        if len(data) != length:
            raise OSError(f"short I2C read: {len(data)} of {length} bytes")
        return list(data)


def _int16(hi: int, lo: int) -> int:
    v = (hi << 8) | lo
    return v - 65536 if v >= 32768 else v


class Mpu6050:
    def __init__(self, bus: Bus, address: int = ADDRESS, accel_g: int = 2, gyro_dps: int = 250):
        self.bus, self.address = bus, address
        self.accel_bits, self.accel_scale = ACCEL_RANGES[accel_g]
        self.gyro_bits, self.gyro_scale = GYRO_RANGES[gyro_dps]

    def setup(self, rate_hz: float) -> str:
        """Check the chip, wake it, set ranges, low-pass filter and sample rate; its name."""
        who = self.bus.read_i2c_block_data(self.address, WHO_AM_I, 1)[0]
        if who not in KNOWN_IDS:
            raise OSError(f"no MPU-6050 at 0x{self.address:02x} (WHO_AM_I = 0x{who:02x})")
        self.bus.write_byte_data(self.address, PWR_MGMT_1, 0x01)  # awake, PLL on gyro X
        self.bus.write_byte_data(self.address, CONFIG, 0x03)  # low-pass ~44 Hz, 1 kHz internal
        divider = max(0, min(255, round(1000.0 / rate_hz) - 1))
        self.bus.write_byte_data(self.address, SMPLRT_DIV, divider)
        self.bus.write_byte_data(self.address, ACCEL_CONFIG, self.accel_bits)
        self.bus.write_byte_data(self.address, GYRO_CONFIG, self.gyro_bits)
        return KNOWN_IDS[who]

    def read(self) -> list[float]:
        """[ax, ay, az] in g and [gx, gy, gz] in degrees per second."""
        raw = self.bus.read_i2c_block_data(self.address, ACCEL_XOUT_H, 14)
        v = [_int16(raw[i], raw[i + 1]) for i in range(0, 14, 2)]
        accel = [round(x / self.accel_scale, 5) for x in v[0:3]]
        gyro = [round(x / self.gyro_scale, 4) for x in v[4:7]]  # v[3]: temperature
        return accel + gyro


def run(
    sensor: Mpu6050,
    rate_hz: float,
    channels: int,
    batch: int,
    count: int = 0,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Sample at ``rate_hz`` on fixed deadlines (no drift), print ``batch`` samples per line;
    ``count`` > 0 stops after that many samples. Returns the number printed."""
    stream = out if out is not None else sys.stdout
    period = 1.0 / rate_hz
    deadline = time.monotonic()
    pending: list[dict[str, object]] = []
    done = 0
    while count <= 0 or done < count:
        values = sensor.read()[:channels]
        pending.append({"values": values, "ts": round(clock(), 4)})
        done += 1
        if len(pending) >= batch or done == count:
            stream.write(json.dumps(pending, separators=(",", ":")) + "\n")
            stream.flush()
            pending = []
        deadline += period
        delay = deadline - time.monotonic()
        if delay > 0:
            sleep(delay)
        elif delay < -1.0:  # fell far behind (a stall): start the schedule again
            deadline = time.monotonic()
    return done


def main(argv: list[str] | None = None, bus: Bus | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bus", type=int, default=1, help="I2C bus number (/dev/i2c-1 on a Pi)")
    p.add_argument("--address", type=lambda s: int(s, 0), default=ADDRESS, help="0x68 or 0x69")
    p.add_argument("--rate", type=float, default=100.0, help="samples per second (4-1000)")
    p.add_argument("--channels", type=int, choices=(3, 6), default=6, help="3: accel only")
    p.add_argument("--batch", type=int, default=10, help="samples per output line")
    p.add_argument("--accel-range", type=int, choices=sorted(ACCEL_RANGES), default=2)
    p.add_argument("--gyro-range", type=int, choices=sorted(GYRO_RANGES), default=250)
    p.add_argument("--count", type=int, default=0, help="stop after N samples (0: never)")
    p.add_argument("--smbus2", action="store_true", help="use the smbus2 package")
    args = p.parse_args(argv)
    if not 4.0 <= args.rate <= 1000.0:
        p.error("--rate must be within 4..1000")
    try:
        if bus is None:
            if args.smbus2:
                from smbus2 import SMBus  # type: ignore[import-not-found]

                bus = SMBus(args.bus)
            else:
                bus = LinuxI2C(args.bus)
        sensor = Mpu6050(bus, args.address, args.accel_range, args.gyro_range)
        name = sensor.setup(args.rate)
        print(
            f"{name} at 0x{args.address:02x} on bus {args.bus}, {args.rate:g} Hz", file=sys.stderr
        )
        run(sensor, args.rate, args.channels, max(1, args.batch), args.count)
    except OSError as exc:
        print(f"mpu6050: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

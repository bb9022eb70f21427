"""A minimal TensorBoard event-file writer for scalars, with no TensorFlow, torch or protobuf dependency.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecords (a little-endian uint64 length, its masked CRC-32C, the
payload, the payload's masked CRC-32C) whose payloads are ``tensorflow.Event`` protocol buffers. The few messages a
scalar needs are encoded by hand here:

  Event    { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
  Summary  { repeated Value value = 1; }
  Value    { string tag = 1; float simple_value = 2; }

(tensorboardX writes the same, but imports torch when it is installed, which costs seconds and can crash; the
official writer needs TensorFlow or the whole tensorboard package.) `read_scalars` decodes files written here.
"""

from __future__ import annotations

import os
import socket
import struct
import time

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _crc_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does.
  while True:
    bits, value = value & 0x7F, value >> 7
    out.append(bits | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def encode_event(wall_time: float, step: int = 0, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
  event = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    event += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
                      for tag, v in scalars.items())
    event += _length_delimited(5, values)
  return event


def tfrecord(payload: bytes) -> bytes:
  length = struct.pack("<Q", len(payload))
  return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


class EventWriter:
  """Appends scalar summaries to a new ``events.out.tfevents.<time>.<host>`` file in ``logdir``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}")
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(encode_event(time.time(), file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._file.write(tfrecord(encode_event(time.time(), step, scalars=values)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


# ---------------------------------------------------------------------------------------------------------------------
# Reading (tests, notebooks).


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if not byte & 0x80:
      return value, pos


def _fields(data: bytes):
  pos = 0
  while pos < len(data):
    key, pos = _read_varint(data, pos)
    number, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, pos = _read_varint(data, pos)
    elif wire_type == 1:
      value, pos = data[pos:pos + 8], pos + 8
    elif wire_type == 5:
      value, pos = data[pos:pos + 4], pos + 4
    elif wire_type == 2:
      size, pos = _read_varint(data, pos)
      value, pos = data[pos:pos + size], pos + size
    else:
      raise ValueError(f"unsupported protobuf wire type {wire_type}")
    yield number, value


def read_records(path: str) -> list[bytes]:
  """The payloads of a TFRecord file, checking both CRCs of every record."""
  with open(path, "rb") as f:
    data = f.read()
  records, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    if length_crc != masked_crc32c(header) or payload_crc != masked_crc32c(payload):
      raise ValueError(f"{path}: CRC mismatch in the record at byte {pos}")
    records.append(payload)
    pos += 16 + length
  return records


def read_scalars(path: str) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in an event file."""
  out = []
  for record in read_records(path):
    fields = list(_fields(record))
    step = next((v for n, v in fields if n == 2), 0)
    for number, summary in fields:
      if number != 5:
        continue
      for _, value in _fields(summary):
        parts = dict(_fields(value))
        out.append((step, parts[1].decode(), struct.unpack("<f", parts[2])[0]))
  return out

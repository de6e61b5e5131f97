#!/bin/sh
# Fills fuzz/corpus/<target>/ with seeds from the golden and hostile test corpora.
set -eu
cd "$(dirname "$0")"
data=../tests/data
mkdir -p corpus/trace_read corpus/record_decode corpus/snapshot_state corpus/bundle_read
# (Not the gigabyte-of-records traces: every run would read all of it.)
for f in $(find "$data" -name '*.vmrr' ! -name 'annotations-1gib.vmrr' ! -name 'checkpoints-2m.vmrr'); do
  cp "$f" corpus/trace_read/
  # A record stream: the bytes after a 72-byte header and a 40-byte chunk header.
  tail -c +121 "$f" > "corpus/record_decode/$(basename "$f").rec"
done
i=0
for f in $(find "$data/hostile/snapshot" -name state.bin); do
  cp "$f" "corpus/snapshot_state/state-$i.bin"; i=$((i + 1))
done
cp "$data"/hostile/bundle/*.vmrrb corpus/bundle_read/

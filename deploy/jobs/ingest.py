"""Ray job: bulk-load Parquet or .npy files into a running nestvec cluster with Ray Data.

    ray job submit --address http://HEAD:8265 --working-dir deploy/jobs -- \
        python ingest.py s3://bucket/vectors/ --collection docs --namespace nestvec

Same flags as `nestvec ingest` (see `nestvec ingest --help` and deploy/README.md).
Safe to re-run after a failure: upserts by id are idempotent.
"""
import sys

from nestvec.cluster._ops.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))

"""Ray job: search query vectors from Parquet/.npy in batches, write ids and scores to Parquet.

    ray job submit --address http://HEAD:8265 --working-dir deploy/jobs -- \
        python batch_search.py s3://bucket/queries/ --output s3://bucket/results/ \
        --collection docs -k 10 --funnel 64:400

Same flags as `nestvec batch-search` (see `nestvec batch-search --help` and deploy/README.md).
"""
import sys

from nestvec.cluster._ops.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch-search", *sys.argv[1:]]))

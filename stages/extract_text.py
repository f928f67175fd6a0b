"""Stage extract_text: BERT-family embeddings of item titles.

In:  --raw-dir  the raw folder of data.source (MicroLens titles file, or the challenge's item_feature.parquet)
Out: --out     parquet: item_id Int32, emb Array(Float32, H), status Utf8 (ok | empty); one row per item
     --metrics JSON: item count, embedding width, counts per status, shards (total, reused), final batch size
Work in progress lives in `.<out name>.shards/` beside --out (finished shards, reused by a rerun after a crash
or kill); it is removed once --out is written. Test hook: MMCTR_FAULT_AFTER_SHARDS (pipeline/extract/store.py).
Params: extract_text.* (ExtractTextConfig), data.source
"""

from pipeline.core.config import ExtractTextConfig
from pipeline.extract.run import extraction_command
from pipeline.extract.text import extract_titles

main = extraction_command("extract_text", ExtractTextConfig, extract_titles, __doc__)

if __name__ == "__main__":
    main()

"""Stage extract_image: open_clip image-tower embeddings of item covers.

In:  --raw-dir  the raw folder of data.source: the item universe (its titles file) and its covers folder
Out: --out     parquet: item_id Int32, emb Array(Float32, D),
               status Utf8 (ok | missing | empty | corrupt | too_large; zero vector unless ok)
Also a metrics JSON (--metrics) and a resumable shard folder beside --out, as extract_text's.
Params: extract_image.* (ExtractImageConfig), data.source
"""

from pipeline.core.config import ExtractImageConfig
from pipeline.extract.image import extract_covers
from pipeline.extract.run import extraction_command

main = extraction_command("extract_image", ExtractImageConfig, extract_covers, __doc__)

if __name__ == "__main__":
    main()

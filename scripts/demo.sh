#!/usr/bin/env bash
# The main job: build a demo collection from real sample photos (Debian packages), show a few searches,
# then serve it (web page + JSON API) on http://127.0.0.1:${PORT:-8080}/ until interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
NEARSIGHT_NO_BROWSER=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
NS=".venv/bin/nearsight"
SAMPLES=data/samples
COLL=demo/collection

bash scripts/fetch_sample_photos.sh "$SAMPLES"
# Balanced: every 12th captioned cut-out (about as many as there are photos), so 785 cut-outs do not drown
# the 66 photos (a "same scene layout" search for a street returned an explosion and gravestones).
# The subset list sits beside captioned.tsv, whose paths are relative to it.
awk 'NR % 12 == 1' "$SAMPLES/captioned.tsv" > "$SAMPLES/captioned-demo.tsv"
# tiny for colour, gist + lab-layout for scene layout and completion, gist-gray + tiny-gray for colorization,
# cnn (ImageNet features) for content. Re-running adds only what is new; add `--encoders clip -o
# clip.pretrained=/path/to/checkpoint.pt` for text search when you have open_clip weights on disk.
$NS index "$SAMPLES/photos" "$SAMPLES/captioned-demo.tsv" -c "$COLL" --encoders tiny,gist,gist-gray,tiny-gray,lab-layout,cnn
$NS info -c "$COLL"

P="$SAMPLES/photos"
mkdir -p demo/queries
.venv/bin/python -c "import sys; from PIL import Image, ImageOps; ImageOps.mirror(Image.open(sys.argv[1])).convert('RGB').save(sys.argv[2], quality=90)" \
  "$P/mate-backgrounds__Garden.jpg" demo/queries/garden-mirrored.jpg
echo; echo "== content (the default encoder, the best held: cnn): a mirrored copy of the garden photo finds it"
$NS search -c "$COLL" --image demo/queries/garden-mirrored.jpg -k 3
echo; echo "== colour only (tiny): the same mirrored copy, by colours and their layout"
$NS search -c "$COLL" --image demo/queries/garden-mirrored.jpg --encoder tiny -k 3
echo; echo "== same scene layout (gist): a Leuven street finds the same street from another corner"
$NS search -c "$COLL" --image "$P/opencv-doc__leuvenA.jpg" --encoder gist -k 3 --min-similarity 0.5
echo; echo "== filters inside the search: cut-outs whose caption says 'bird', most like the ladybird photo"
$NS search -c "$COLL" --image "$P/mate-backgrounds__LadyBird.jpg" --caption bird -k 3
echo; echo "== photos only (a folder filter), near-copies folded into one result with their count (--collapse)"
$NS search -c "$COLL" --image "$P/opencv-doc__aloeL.jpg" --path-prefix "$P" --collapse -k 4

echo; echo "Serving $COLL at http://127.0.0.1:${PORT:-8080}/ (Ctrl-C to stop)"
exec $NS serve -c "$COLL" --port "${PORT:-8080}"

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
# The 66 photos, the 785 captioned cut-outs (their captions teach the text model, and "an orange" needs the
# oranges) and 500 labelled Fashion-MNIST images (every 4th; the subset list sits beside labels.tsv, whose
# paths are relative to it). Photo-only examples below use a folder filter so the cut-outs do not crowd them.
awk 'NR % 4 == 1' "$SAMPLES/fashion-mnist/labels.tsv" > "$SAMPLES/fashion-mnist/labels-demo.tsv"
# tiny for colour, gist + lab-layout for scene layout and completion, gist-gray + tiny-gray for colorization,
# cnn (ImageNet features) for content. Re-running adds only what is new; add `--encoders clip -o
# clip.pretrained=/path/to/checkpoint.pt` for open_clip's text search when you have its weights on disk.
# Photos last, so they are what the page's "recently added" grid shows first.
$NS index "$SAMPLES/fashion-mnist/labels-demo.tsv" "$SAMPLES/captioned.tsv" "$SAMPLES/photos" -c "$COLL" \
    --encoders tiny,gist,gist-gray,tiny-gray,lab-layout,cnn
# Text search with no download: text + image heads trained on the cut-outs' captions, the Fashion-MNIST labels
# and weak ImageNet captions of the photos (a couple of minutes on 2 cores; once, or again with RETRAIN=1).
if [ "${RETRAIN:-0}" = 1 ] || ! .venv/bin/python -c "
import json, sys; m = json.load(open('$COLL/collection.json'))
sys.exit(0 if any(e.get('kind') == 'triplet' for e in m['encoders']) else 1)"; then
  $NS train -c "$COLL"
fi
$NS info -c "$COLL"

for words in "an orange" "a flower" "a sneaker"; do
  echo; echo "== \"$words\" (the trained text model)"
  $NS search -c "$COLL" --text "$words" -k 4
done

P="$SAMPLES/photos"
mkdir -p demo/queries
.venv/bin/python -c "import sys; from PIL import Image, ImageOps; ImageOps.mirror(Image.open(sys.argv[1])).convert('RGB').save(sys.argv[2], quality=90)" \
  "$P/mate-backgrounds__Garden.jpg" demo/queries/garden-mirrored.jpg
# A 64-pixel, badly recompressed copy (what a forum or a chat app makes of a photo), for the tiny images.
.venv/bin/python -c "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); im.thumbnail((64, 64)); im.save(sys.argv[2], quality=40)" \
  "$P/lomiri-wallpapers-16.04__sunset_by_Aitzol_Berasategi.jpg" demo/queries/sunset-64px.jpg
echo; echo "== content (cnn): a mirrored copy of the garden photo finds it"
$NS search -c "$COLL" --image demo/queries/garden-mirrored.jpg --encoder cnn -k 3
echo; echo "== colours and their layout (tiny): a 64-pixel, quality-40 copy of the sunset photo finds it, then the"
echo "   photos with the same colours where they are (a mirrored copy is another picture to tiny images)"
$NS search -c "$COLL" --image demo/queries/sunset-64px.jpg --encoder tiny -k 3
# Layout searches compare photos with photos: the cut-outs (on white) and Fashion-MNIST (on black) are flat
# layouts that a photo with sky or water resembles (unfiltered, the bridge photo's nearest are an explosion,
# a squash and gravestones), so this one, like the page link printed below, keeps to the photos folder.
echo; echo "== same scene layout (gist): a Leuven street finds the same street from another corner"
$NS search -c "$COLL" --image "$P/opencv-doc__leuvenA.jpg" --encoder gist --path-prefix "$P" -k 3 --min-similarity 0.5
echo; echo "== filters inside the search: only cut-outs whose caption says 'red', most like the ladybird photo"
$NS search -c "$COLL" --image "$P/mate-backgrounds__LadyBird.jpg" --caption red -k 3
echo; echo "== photos only (a folder filter), near-copies folded into one result with their count (--collapse)"
$NS search -c "$COLL" --image "$P/opencv-doc__rubberwhale1.png" --path-prefix "$P" --collapse -k 3

echo; echo "Serving $COLL at http://127.0.0.1:${PORT:-8080}/ (Ctrl-C to stop)"
echo "  photos only (the folder filter, kept in the link; use it for 'More like this (gist)'):"
echo "  http://127.0.0.1:${PORT:-8080}/?path=$P/"
exec $NS serve -c "$COLL" --port "${PORT:-8080}"

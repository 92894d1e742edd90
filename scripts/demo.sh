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
# Photos plus captioned cut-outs; tiny for speed, gist + lab-layout for scene matching and completion,
# gist-gray + tiny-gray for colorization, cnn (ImageNet features) for content.
# Re-running adds only what is new; add `--encoders clip -o clip.pretrained=/path/to/checkpoint.pt`
# for text search when you have open_clip weights on disk.
$NS index "$SAMPLES/photos" "$SAMPLES/captioned.tsv" -c "$COLL" --encoders tiny,gist,gist-gray,tiny-gray,lab-layout,cnn
$NS info -c "$COLL"

first=$(ls "$SAMPLES"/photos/* | head -n 1)
echo; echo "== photos most like $first (cnn)"
$NS search -c "$COLL" --image "$first" --encoder cnn -k 5
echo; echo "== same scene layout (gist)"
$NS search -c "$COLL" --image "$first" --encoder gist -k 5
echo; echo "== more like item 3 (tiny)"
$NS search -c "$COLL" --id 3 --encoder tiny -k 5

echo; echo "Serving $COLL at http://127.0.0.1:${PORT:-8080}/ (Ctrl-C to stop)"
exec $NS serve -c "$COLL" --port "${PORT:-8080}"

#!/usr/bin/env bash
# Build nearsight's sample image set from Debian packages: real photographs, captioned cut-outs and a
# labelled Fashion-MNIST slice. No machine here reaches the web, but the Debian mirror is reachable and
# these packages ship freely licensed images, so they are the one source of real data for tests,
# benchmarks and demos.
#
# Usage: scripts/fetch_sample_photos.sh DEST          (e.g. data/samples; data/ is git-ignored)
#   FASHION_MNIST_N=2000   how many Fashion-MNIST test images to export (first N of the 10000)
#
# Layout written under DEST:
#   photos/<package>__<name>.<ext>          real photographs only (graphics and test patterns left out)
#   captioned/<category>__<stamp>.png       Tux Paint stamps, each with a sidecar <same name>.txt caption
#   captioned.tsv                           file list: path relative to DEST <TAB> caption
#   fashion-mnist/<class>/test_NNNNN.png    28x28 greyscale; NNNNN is the index in the test set
#   fashion-mnist/labels.tsv                file list: path relative to fashion-mnist/ <TAB> label name
#   .complete                               marker: present (with matching settings) => nothing to do;
#                                           delete it to force a rebuild
# The .tsv lists use the format nearsight's file-list source reads (paths relative to the list file).
#
# Packages are fetched with `apt-get download` and unpacked with `dpkg -x` into a temporary folder, so
# nothing is installed on the system and root is not needed. A build downloads ~455 MB of .deb files
# (removed on exit) and writes ~72 MB to DEST; it takes a few minutes, mostly unpacking.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
DEST=$1
FASHION_MNIST_N=${FASHION_MNIST_N:-2000}
if ! [[ $FASHION_MNIST_N =~ ^[0-9]+$ ]] || (( FASHION_MNIST_N < 1 || FASHION_MNIST_N > 10000 )); then
    echo "FASHION_MNIST_N must be an integer in 1..10000, got '$FASHION_MNIST_N'" >&2
    exit 2
fi

# Bump the version when the selection below changes, so existing sample sets get rebuilt.
MARKER_TEXT="nearsight-samples v1 fashion_mnist_n=$FASHION_MNIST_N"
if [[ -f $DEST/.complete && "$(cat "$DEST/.complete")" == "$MARKER_TEXT" ]]; then
    echo "sample set in $DEST is already complete ($MARKER_TEXT); nothing to do"
    exit 0
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=$REPO_ROOT/.venv/bin/python
[[ -x $PYTHON ]] || PYTHON=python3

PACKAGES=(mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
          opencv-doc tuxpaint-stamps-default dataset-fashion-mnist)

# Chosen by looking at every image: these plasma wallpapers are photographs, the others are
# vector/low-poly artwork (Volna included, despite looking like an aerial beach shot).
PLASMA_PHOTOS=(BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite
               OneStandsOut Path summer_1am)
# The lomiri sets are mostly photographs; these few are gradients, abstract art or a tinted texture.
LOMIRI_NOT_PHOTOS=(analogpattern_by_Peter_Nerlich umang_by_Abhishek_Mudgal Fossa_by_Jasper_Roks
                   Infinite-Sea_by_Aury88 Painting-Colors_by__herobrine7gamer)
# opencv's examples/data mixes photographs with logos, drawings, synthetic shapes, text scans,
# masks and calibration chessboards; keep the photographs of real scenes. Stereo/optical-flow
# pairs (aloeL/R, leuvenA/B, ...) stay in on purpose: they are natural near-duplicates.
OPENCV_PHOTOS=(aero1.jpg aero3.jpg aloeL.jpg aloeR.jpg apple.jpg baboon.jpg basketball1.png
               basketball2.png board.jpg box_in_scene.png building.jpg butterfly.jpg chicky_512.png
               ela_original.jpg fruits.jpg graf1.png graf3.png home.jpg left.jpg right.jpg leuvenA.jpg
               leuvenB.jpg messi5.jpg orange.jpg rubberwhale1.png rubberwhale2.png smarties.png
               squirrel_cls.jpg stuff.jpg)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nearsight-samples.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt-get download drops to the _apt user when run as root; it needs to write here.
chmod 755 "$WORK"
mkdir -m 777 "$WORK/debs"

echo "== downloading ${#PACKAGES[@]} packages into $WORK/debs"
if ! (cd "$WORK/debs" && apt-get download -q "${PACKAGES[@]}"); then
    echo "apt-get download failed: is the Debian mirror reachable and has 'apt-get update' been run?" >&2
    exit 1
fi
for pkg in "${PACKAGES[@]}"; do
    deb=$(ls "$WORK/debs/${pkg}"_*.deb)
    echo "   unpacking $(basename "$deb")"
    mkdir -p "$WORK/x/$pkg"
    dpkg -x "$deb" "$WORK/x/$pkg"
done

# Rebuild only what this script owns; anything else the user keeps in DEST is left alone.
mkdir -p "$DEST"
rm -rf "$DEST/.complete" "$DEST/photos" "$DEST/captioned" "$DEST/captioned.tsv" "$DEST/fashion-mnist"
mkdir -p "$DEST/photos" "$DEST/captioned" "$DEST/fashion-mnist"

in_list() {  # in_list WORD LIST... -> status 0 when WORD is one of LIST
    local word=$1; shift
    local item
    for item in "$@"; do [[ $item == "$word" ]] && return 0; done
    return 1
}

echo "== photos"
src=$WORK/x/mate-backgrounds/usr/share/backgrounds/mate/nature
for f in "$src"/*.jpg "$src"/*.png; do
    if [[ -f $f ]]; then cp "$f" "$DEST/photos/mate-backgrounds__$(basename "$f")"; fi
done

# Each plasma wallpaper ships several resolutions named WxH.ext (most are symlinks to one file);
# keep the largest real file of the light variant (images/, not images_dark/).
for name in "${PLASMA_PHOTOS[@]}"; do
    dir=$WORK/x/plasma-workspace-wallpapers/usr/share/wallpapers/$name/contents/images
    best="" best_area=0
    for f in "$dir"/*; do
        [[ -f $f && ! -L $f ]] || continue
        size=$(basename "${f%.*}")
        [[ $size =~ ^([0-9]+)x([0-9]+)$ ]] || continue
        area=$(( BASH_REMATCH[1] * BASH_REMATCH[2] ))
        if (( area > best_area )); then best=$f best_area=$area; fi
    done
    if [[ -z $best ]]; then
        echo "plasma wallpaper $name has no WxH image in $dir; has the package changed?" >&2
        exit 1
    fi
    cp "$best" "$DEST/photos/plasma-workspace-wallpapers__$name.${best##*.}"
done

for pkg in lomiri-wallpapers-16.04 lomiri-wallpapers-20.04; do
    for f in "$WORK/x/$pkg"/usr/share/backgrounds/*.jpg; do
        stem=$(basename "${f%.*}")
        if in_list "$stem" "${LOMIRI_NOT_PHOTOS[@]}"; then continue; fi
        cp "$f" "$DEST/photos/${pkg}__$(basename "$f")"
    done
done

for name in "${OPENCV_PHOTOS[@]}"; do
    f=$WORK/x/opencv-doc/usr/share/doc/opencv-doc/examples/data/$name
    if [[ ! -f $f ]]; then
        echo "opencv-doc no longer ships examples/data/$name; update OPENCV_PHOTOS" >&2
        exit 1
    fi
    cp "$f" "$DEST/photos/opencv-doc__$name"
done

echo "== captioned stamps"
# Each stamp's .txt holds the English description on its first line, then "lang.utf8=..." translations.
# Stamps without a .txt (the *_mirror.png variants) have no caption and are skipped; stamps that only
# exist as SVG are skipped too (we want raster cut-outs).
stamps=$WORK/x/tuxpaint-stamps-default/usr/share/tuxpaint/stamps
: > "$DEST/captioned.tsv"
while IFS= read -r -d '' png; do
    txt=${png%.png}.txt
    [[ -f $txt ]] || continue
    # First line only, with shell builtins (800 stamps x several forks is slow on a busy machine).
    # `|| true`: read fails on a file whose only line has no final newline, but still sets caption.
    IFS= read -r caption < "$txt" || true
    caption=${caption#$'\xEF\xBB\xBF'}      # BOM
    caption=${caption%$'\r'}                # CRLF line end
    caption=${caption//$'\t'/ }             # the .tsv is tab-separated
    caption=${caption#"${caption%%[![:space:]]*}"}   # strip leading whitespace
    caption=${caption%"${caption##*[![:space:]]}"}   # strip trailing whitespace
    [[ -n $caption ]] || continue
    rel=${png#"$stamps"/}
    # Stamp names repeat across categories (banana.png, butterfly.png...), so keep the category path.
    flat=${rel//\//__}
    cp "$png" "$DEST/captioned/$flat"
    printf '%s\n' "$caption" > "$DEST/captioned/${flat%.png}.txt"
    printf 'captioned/%s\t%s\n' "$flat" "$caption" >> "$DEST/captioned.tsv"
done < <(find "$stamps" -name '*.png' -type f -print0 | sort -z)

echo "== fashion-mnist (first $FASHION_MNIST_N test images) with $PYTHON"
"$PYTHON" - "$WORK/x/dataset-fashion-mnist/usr/share/datasets/fashion-mnist" "$DEST/fashion-mnist" \
    "$FASHION_MNIST_N" <<'EOF'
import gzip
import os
import sys

import numpy as np
from PIL import Image

src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path, magic):
    # IDX: big-endian int32 magic, then one int32 per dimension, then uint8 data.
    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        sys.exit(f"{path}: IDX magic {found}, expected {magic}")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", ndim, 4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


images = read_idx(os.path.join(src, "t10k-images-idx3-ubyte.gz"), 2051)
labels = read_idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"), 2049)
if len(images) != len(labels) or len(images) < n:
    sys.exit(f"test set has {len(images)} images and {len(labels)} labels; asked for {n}")

# Folder names must not contain "/", so slug the label names ("T-shirt/top" -> "t-shirt-top").
slugs = [name.lower().replace("/", "-").replace(" ", "-") for name in LABELS]
for slug in slugs:
    os.makedirs(os.path.join(out, slug), exist_ok=True)
rows = []
for i in range(n):
    rel = f"{slugs[labels[i]]}/test_{i:05d}.png"
    Image.fromarray(images[i]).save(os.path.join(out, rel))  # 2-D uint8 -> greyscale "L" PNG
    rows.append(f"{rel}\t{LABELS[labels[i]]}\n")
with open(os.path.join(out, "labels.tsv"), "w", encoding="utf-8") as f:
    f.writelines(rows)
EOF

printf '%s\n' "$MARKER_TEXT" > "$DEST/.complete"

count() { find "$1" -type f -name "$2" | wc -l; }
echo "== done: $DEST ($(du -sh "$DEST" | cut -f1))"
echo "   photos:        $(count "$DEST/photos" '*') files"
for pkg in mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 opencv-doc; do
    printf '     %-30s %s\n' "$pkg" "$(count "$DEST/photos" "${pkg}__*")"
done
echo "   captioned:     $(count "$DEST/captioned" '*.png') stamps ($(wc -l < "$DEST/captioned.tsv") lines in captioned.tsv)"
echo "   fashion-mnist: $(count "$DEST/fashion-mnist" '*.png') images ($(wc -l < "$DEST/fashion-mnist/labels.tsv") lines in labels.tsv)"

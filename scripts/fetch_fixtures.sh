#!/usr/bin/env bash
# Fetch the small real-data samples the tests use into tests/fixtures/<folder>/, from their public
# origin (a GitHub repository at a fixed commit). Their licences are the datasets' own, several
# non-commercial or research-only, so they are not in this repository (tests/fixtures/.gitignore);
# the Apache-2.0 photos/ and videos/ are, with their LICENSE.
#
#   scripts/fetch_fixtures.sh                    # every folder that is missing
#   scripts/fetch_fixtures.sh nyu_v2 davis       # just these
#   scripts/fetch_fixtures.sh --from DIR [...]   # copy from a local mirror (e.g. ../shared/fixtures) instead
#   scripts/fetch_fixtures.sh --list             # what each folder is and where it comes from
#
# Needs curl and the network (raw.githubusercontent.com). Tests that need an absent sample skip,
# naming this script; under CI=true they fail.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
here=$PWD
cd "$(dirname "$self")/.."
dest=tests/fixtures

# folder | owner/repo@commit | licence | "local=remote" paths (remote relative to the repository)
origins() {
cat <<'LIST'
coco_keypoints|open-mmlab/mmpose@759b39c13fea6ba094afc1fa932f51dc1b11cbf9|Apache-2.0 repo; COCO images Flickr terms, annotations CC BY 4.0|test_coco.json=tests/data/coco/test_coco.json 000000000785.jpg=tests/data/coco/000000000785.jpg 000000040083.jpg=tests/data/coco/000000040083.jpg 000000196141.jpg=tests/data/coco/000000196141.jpg 000000197388.jpg=tests/data/coco/000000197388.jpg LICENSE=LICENSE
coco_panoptic|cocodataset/panopticapi@7bb4655548f98f3fedc07bf37e9040a992b054b0|BSD-2 repo; COCO images CC BY-NC(-SA), annotations CC BY 4.0|license.txt=license.txt panoptic_coco_categories.json=panoptic_coco_categories.json sample_data/images_info_examples.json=sample_data/images_info_examples.json sample_data/panoptic_examples.json=sample_data/panoptic_examples.json sample_data/panoptic_coco_detection_format.json=sample_data/panoptic_coco_detection_format.json sample_data/input_images/000000142238.jpg=sample_data/input_images/000000142238.jpg sample_data/input_images/000000439180.jpg=sample_data/input_images/000000439180.jpg sample_data/panoptic_examples/000000142238.png=sample_data/panoptic_examples/000000142238.png sample_data/panoptic_examples/000000439180.png=sample_data/panoptic_examples/000000439180.png sample_data/panoptic_examples_2ch_format/000000142238.png=sample_data/panoptic_examples_2ch_format/000000142238.png sample_data/panoptic_examples_2ch_format/000000439180.png=sample_data/panoptic_examples_2ch_format/000000439180.png
nyu_v2|YvanYin/Metric3D@eb5b6fac0dc155e4e52f576e304fbf11655ff339|BSD-2 repo; NYU-Depth-v2 research terms|rgb/rgb_00000.jpg=data/nyu_demo/rgb/rgb_00000.jpg rgb/rgb_00050.jpg=data/nyu_demo/rgb/rgb_00050.jpg rgb/rgb_00100.jpg=data/nyu_demo/rgb/rgb_00100.jpg depth/sync_depth_00000.png=data/nyu_demo/depth/sync_depth_00000.png depth/sync_depth_00050.png=data/nyu_demo/depth/sync_depth_00050.png depth/sync_depth_00100.png=data/nyu_demo/depth/sync_depth_00100.png test_annotations.json=data/nyu_demo/test_annotations.json LICENSE=LICENSE
davis|hkchengrex/Cutie@ec5cdd4cf16f75c73ad785a2f96fb97dbad4125a|MIT repo; DAVIS terms (research)|images/bike/00000.jpg=examples/images/bike/00000.jpg images/bike/00001.jpg=examples/images/bike/00001.jpg images/bike/00002.jpg=examples/images/bike/00002.jpg images/bike/00003.jpg=examples/images/bike/00003.jpg images/judo/00000.jpg=examples/images/judo/00000.jpg images/judo/00001.jpg=examples/images/judo/00001.jpg images/judo/00002.jpg=examples/images/judo/00002.jpg images/judo/00003.jpg=examples/images/judo/00003.jpg images/judo/00004.jpg=examples/images/judo/00004.jpg images/judo/00005.jpg=examples/images/judo/00005.jpg images/judo/00006.jpg=examples/images/judo/00006.jpg images/judo/00007.jpg=examples/images/judo/00007.jpg images/judo/00008.jpg=examples/images/judo/00008.jpg images/judo/00009.jpg=examples/images/judo/00009.jpg images/judo/00010.jpg=examples/images/judo/00010.jpg images/judo/00011.jpg=examples/images/judo/00011.jpg images/judo/00012.jpg=examples/images/judo/00012.jpg images/judo/00013.jpg=examples/images/judo/00013.jpg images/judo/00014.jpg=examples/images/judo/00014.jpg images/judo/00015.jpg=examples/images/judo/00015.jpg masks/bike/00000.png=examples/masks/bike/00000.png masks/judo/00000.png=examples/masks/judo/00000.png masks/judo/00005.png=examples/masks/judo/00005.png masks/judo/00008.png=examples/masks/judo/00008.png masks/judo/00013.png=examples/masks/judo/00013.png LICENSE=LICENSE
flow|open-mmlab/mmflow@9fb1d2f1bb3de641ddcba0dd355064b6ed9419f4|Apache-2.0 repo; FlyingChairs research terms|00001_img1.ppm=tests/data/00001_img1.ppm 00001_img2.ppm=tests/data/00001_img2.ppm 00001_flow.flo=tests/data/00001_flow.flo 0000000-img_0.png=tests/data/0000000-img_0.png 0000000-img_1.png=tests/data/0000000-img_1.png 0000000-flow_01.flo=tests/data/0000000-flow_01.flo 0000000-flow_10.flo=tests/data/0000000-flow_10.flo 0000000-occ_01.png=tests/data/0000000-occ_01.png 0000000-occ_10.png=tests/data/0000000-occ_10.png 0000000-occ_weights_01.pfm=tests/data/0000000-occ_weights_01.pfm 0000000-occ_weights_10.pfm=tests/data/0000000-occ_weights_10.pfm 0000000-oids_0.png=tests/data/0000000-oids_0.png 0000000-oids_1.png=tests/data/0000000-oids_1.png LICENSE=LICENSE
LIST
}

mirror=""
list=0
want=()
while [ $# -gt 0 ]; do
    case "$1" in
        --from) mirror="${2:?--from needs a folder}"; shift 2
                case "$mirror" in /*) ;; *) mirror="$here/$mirror" ;; esac
                [ -d "$mirror" ] || { echo "fetch_fixtures: --from $mirror: no such folder" >&2; exit 2; } ;;
        --list) list=1; shift ;;
        -h|--help) sed -n '2,13p' "$self"; exit 0 ;;
        -*) echo "fetch_fixtures: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) want+=("$1"); shift ;;
    esac
done

known=$(origins | cut -d'|' -f1 | tr '\n' ' ')
for w in "${want[@]+"${want[@]}"}"; do
    case " $known photos videos " in
        *" $w "*) ;;
        *) echo "fetch_fixtures: no sample folder '$w' (known: $known)" >&2; exit 2 ;;
    esac
done

status=0
while IFS='|' read -r folder origin licence files; do
    repo=${origin%@*}; commit=${origin#*@}
    if [ "$list" = 1 ]; then
        echo "$folder: github.com/$repo @ $commit ($licence)"; continue
    fi
    if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $folder "* ]]; then continue; fi
    if [ ${#want[@]} -eq 0 ] && [ -d "$dest/$folder" ]; then continue; fi
    tmp="$dest/.$folder.partial"
    rm -rf "$tmp"
    echo "fetch_fixtures: $folder from ${mirror:-github.com/$repo @ ${commit:0:12}}"
    ok=1
    for pair in $files; do
        local_path=${pair%%=*}; remote=${pair#*=}
        mkdir -p "$tmp/$(dirname "$local_path")"
        if [ -n "$mirror" ]; then
            cp "$mirror/$folder/$local_path" "$tmp/$local_path" || { ok=0; break; }
        elif ! curl -fsSL --retry 2 -o "$tmp/$local_path" \
                "https://raw.githubusercontent.com/$repo/$commit/$remote"; then
            echo "fetch_fixtures: could not fetch $repo/$remote" >&2; ok=0; break
        fi
    done
    if [ "$ok" = 1 ]; then
        rm -rf "${dest:?}/$folder" && mv "$tmp" "$dest/$folder"
    else
        rm -rf "$tmp"; status=1
    fi
done < <(origins)
for w in "${want[@]+"${want[@]}"}"; do
    case "$w" in photos|videos) echo "fetch_fixtures: $w is in the repository already ($dest/$w)";; esac
done
exit $status

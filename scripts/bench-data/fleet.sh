# `scripts/bench fleet`: issue 15's benchmark (described in scripts/bench's header). Sourced by
# scripts/bench, whose helpers it uses (die, log, now, record, write_dockerfile, replace_file,
# edit_v2, diff_ids, the EXIT trap's cleanup, which calls cleanup_fleet).
#
# One L2 bridge of the bench's own carries everything, so no host forwarding or NAT is needed:
#
#   bridge dtsfleet0 10.219.8.1/24
#     ├── sim-fleetNN ══ eth0 .2… (netns dts-sim-fleetNN, `dts sim up --link-rate`)
#     ├── fl-laptop   ══ eth0 .250 (netns dtsbench-laptop: every dts command runs here)
#     └── fl-hub      ══ eth0 .251 (netns dtsbench-hub: docker-registry on :5000)
#
# Each link has a `tc tbf` on both ends, as `dts sim up --link-rate` makes (burst 1/250 s of
# traffic, latency 400 ms). `ip netns exec` keeps the file systems (it only remounts /sys), so
# the laptop's DTS_HOME, sim key and known_hosts are the same files the host's `dts sim up`
# wrote. Counters are the host-side veths': rx of fl-laptop is the laptop's uplink, tx of
# each sim-* what crossed a robot's link toward it, tx/rx of fl-hub what went into / came out
# of the registry.

FLEET_BRIDGE=dtsfleet0
FLEET_NET=10.219.8
FLEET_SUBNET=$FLEET_NET.0/24
LAPTOP_NS=dtsbench-laptop
LAPTOP_IF=fl-laptop
HUB_NS=dtsbench-hub
HUB_IF=fl-hub
HUB_ADDR=$FLEET_NET.251
HUB_PORT=5000
FLEET_SIMS=()
FLEET_IFACES=()
FLEET_LINKS=()
FLEET_HUB_PID=
FLEET_HUB_RUNS=0
FLEET_STARTED=0

rate_bits() { # RATE (e.g. 20mbit, 1gbit) → bits per second
    local n=${1%%[a-zA-Z]*} unit=${1##*[0-9]}
    case ${unit,,} in
        bit | '') echo "$n" ;;
        kbit) echo $((n * 1000)) ;;
        mbit) echo $((n * 1000000)) ;;
        gbit) echo $((n * 1000000000)) ;;
        *) die "rate $1: expected a number and kbit, mbit or gbit" ;;
    esac
}

# A namespace joined to the bridge by a veth shaped to RATE both ways.
fleet_link() { # NETNS HOST-IFACE ADDRESS RATE
    local ns=$1 hv=$2 addr=$3 rate=$4 burst
    burst=$(($(rate_bits "$rate") / 8 / 250))
    ((burst >= 4096)) || burst=4096
    ip netns add "$ns"
    FLEET_LINKS+=("$ns:$hv")
    ip link add "$hv" type veth peer name eth0 netns "$ns"
    ip link set "$hv" master "$FLEET_BRIDGE"
    ip link set "$hv" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$FLEET_NET.1"
    tc qdisc replace dev "$hv" root tbf rate "$rate" burst "$burst" latency 400ms
    tc -n "$ns" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 400ms
}

laptop() { ip netns exec "$LAPTOP_NS" "$@"; }

# Starts robots fleet01…fleetNN (sequentially: `sim up` picks the first free address). A robot
# that does not come up ends the list there: the run goes on with the robots the machine held.
fleet_sims_up() { # N RATE
    local n=$1 rate=$2 i name info
    FLEET_SIMS=()
    FLEET_IFACES=()
    for ((i = 1; i <= n; i++)); do
        printf -v name 'fleet%02d' "$i"
        # Listed before it starts, so an interrupted `sim up` is cleaned up too.
        FLEET_SIMS+=("$name")
        if ! "$DTS" sim up "$name" --configuration virtual --link-rate "$rate" >>"$LOG" 2>&1; then
            log "robot $name did not come up (see $LOG); going on with $((i - 1))"
            "$DTS" sim down "$name" >>"$LOG" 2>&1 || true
            unset 'FLEET_SIMS[-1]'
            break
        fi
    done
    ((${#FLEET_SIMS[@]} > 0)) || die "no robot came up (see $LOG)"
    # A robot made again has its old address and a new MAC: the laptop's and the hub's
    # neighbour entries would send its first packets to the old one for up to a minute
    # (a real robot keeps its MAC; this is the sims' doing).
    local ns
    for ns in "$LAPTOP_NS" "$HUB_NS"; do
        [[ ! -e /run/netns/$ns ]] || ip -n "$ns" neigh flush all
    done
    for name in "${FLEET_SIMS[@]}"; do
        info=$("$DTS" sim ls --json | jq -c --arg n "$name" '.[] | select(.name == $n)')
        FLEET_IFACES+=("$(jq -r .host_interface <<<"$info")")
    done
}

fleet_sims_down() {
    local name
    for name in "${FLEET_SIMS[@]}"; do
        "$DTS" sim down "$name" >>"$LOG" 2>&1 || log "dts sim down $name failed"
    done
    FLEET_SIMS=()
    FLEET_IFACES=()
}

# Every robot back to an empty agent store: a cold deploy must find nothing there.
fleet_reset() { # N RATE
    log "resetting the robots (sim down, sim up)"
    fleet_sims_down
    fleet_sims_up "$@"
}

# A fresh, empty registry in the hub's namespace (a new storage directory each time, so a
# scenario never finds an earlier one's blobs there).
fleet_hub_start() {
    fleet_hub_stop
    FLEET_HUB_RUNS=$((FLEET_HUB_RUNS + 1))
    local dir=$TMP/hub-$FLEET_HUB_RUNS i
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $HUB_ADDR:$HUB_PORT
log:
  level: error
EOF
    ip netns exec "$HUB_NS" docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 &
    FLEET_HUB_PID=$!
    for i in $(seq 100); do
        laptop bash -c "exec 3<>/dev/tcp/$HUB_ADDR/$HUB_PORT" 2>/dev/null && return 0
        kill -0 "$FLEET_HUB_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the registry in $HUB_NS did not start (see $dir/registry.log)"
}

fleet_hub_stop() {
    [[ -n $FLEET_HUB_PID ]] || return 0
    kill "$FLEET_HUB_PID" 2>/dev/null || true
    wait "$FLEET_HUB_PID" 2>/dev/null || true
    FLEET_HUB_PID=
}

sysnet() { cat "/sys/class/net/$1/statistics/$2"; }

# laptop uplink, robots' links toward them (sum), into the hub, out of the hub.
fleet_counters() {
    local down=0 i
    for i in "${FLEET_IFACES[@]}"; do down=$((down + $(sysnet "$i" tx_bytes))); done
    echo "$(sysnet "$LAPTOP_IF" rx_bytes) $down $(sysnet "$HUB_IF" tx_bytes) $(sysnet "$HUB_IF" rx_bytes)"
}

# Runs a command with the links counted and timed; records fleet SCENARIO s, laptop_up,
# robots_down, hub_in, hub_out, rc. stdout goes to $TMP/out/fleet-SCENARIO.
fleet_measured() { # SCENARIO COMMAND…
    local scenario=$1 t0 t1 rc=0 a b
    shift
    mkdir -p "$TMP/out"
    log "fleet: $scenario (${#FLEET_SIMS[@]} robots)"
    read -ra a < <(fleet_counters)
    t0=$(now)
    "$@" >"$TMP/out/fleet-$scenario" 2>>"$LOG" || rc=$?
    t1=$(now)
    # Let the last ACKs and FINs cross before reading the counters.
    sleep 0.3
    read -ra b < <(fleet_counters)
    ((rc == 0)) || log "$scenario failed with exit code $rc (see $LOG)"
    record fleet "$scenario" s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
    record fleet "$scenario" laptop_up $((b[0] - a[0]))
    record fleet "$scenario" robots_down $((b[1] - a[1]))
    record fleet "$scenario" hub_in $((b[2] - a[2]))
    record fleet "$scenario" hub_out $((b[3] - a[3]))
    record fleet "$scenario" rc "$rc"
    record fleet "$scenario" robots "${#FLEET_SIMS[@]}"
}

# How many robots a `dts fleet deploy --json` (or a list of `duckiebot deploy --json`
# documents) says committed, and the other states.
fleet_states() { # SCENARIO
    local out=$TMP/out/fleet-$1
    record fleet "$1" committed "$(jq -s '[.[] | (.robots // [.])[] | select(.state == "committed")] | length' "$out" 2>/dev/null || echo 0)"
    record fleet "$1" states "$(jq -rs '[.[] | (.robots // [.])[] | .state] | group_by(.) |
        map("\(.[0])=\(length)") | join(",")' "$out" 2>/dev/null || echo unreadable)"
}

fleet_loop() { # FIRST LAST: `dts duckiebot deploy` to robots FIRST…LAST, one after the other
    local i
    for ((i = $1; i <= $2; i++)); do
        laptop "$DTS" duckiebot deploy "${FLEET_SIMS[i - 1]}" --stack "$STACK" --json || return
    done
}

fleet_deploy() { # extra flags…
    laptop "$DTS" fleet deploy "${FLEET_SIMS[@]}" --stack "$STACK" --max-parallel "${#FLEET_SIMS[@]}" --json "$@"
}

# Each robot pulls the image from the registry itself, layer by layer (skopeo copy, the way a
# Duckietown robot's `docker pull` does), all at once. skopeo keeps a blob-info cache in
# /var/lib/containers/cache whatever it is told: each copy runs in a private mount namespace
# with a directory of its own bound there, so no robot learns from another.
fleet_registry_pull() { # REF
    local name pids=() rc=0 p
    for name in "${FLEET_SIMS[@]}"; do
        mkdir -p "$TMP/pull/$name/cache"
        ip netns exec "dts-sim-$name" unshare --mount --propagation private -- bash -c '
            mount --bind "$1" "$2" || exit 125
            shift 2
            exec skopeo "$@"' _ "$TMP/pull/$name/cache" "$BLOB_INFO_CACHE" \
            copy --src-tls-verify=false --quiet "docker://$1" "dir:$TMP/pull/$name/image" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    return "$rc"
}

# Each robot's current release (`fleet status --json`), one line.
fleet_releases() {
    laptop "$DTS" fleet status "${FLEET_SIMS[@]}" --json 2>>"$LOG" | jq -c '[.robots[].release]'
}

# (e) The issue's canary: v1 again, with a health check that fails, `--canary 1`: the first
# robot rolls back, the others are never started, every release is as it was.
fleet_canary() {
    local before after out=$TMP/out/fleet-hub_canary expect=0
    sed 's|"/bin/busybox", "true"|"/bin/busybox", "false"|' "$STACK" >"$TMP/stack-bad.yaml"
    before=$(fleet_releases)
    "$DTS" image tag "$IMAGE:v1" "$IMAGE:current" >>"$LOG" 2>&1
    STACK=$TMP/stack-bad.yaml fleet_measured hub_canary \
        fleet_deploy --via "$HUB_ADDR:$HUB_PORT" --insecure --canary 1
    after=$(fleet_releases)
    fleet_states hub_canary
    if jq -e --argjson n "${#FLEET_SIMS[@]}" '.robots[0].state == "rolled-back"
        and (.robots[0].error | type == "string")
        and ([.robots[1:][] | select(.state == "skipped")] | length) == $n - 1' "$out" >/dev/null 2>&1 &&
        [[ $before == "$after" && $before != *null* ]]; then
        expect=1
    else
        log "hub_canary: not as expected (releases $before → $after; see $out)"
    fi
    record fleet hub_canary expect "$expect"
}

# (f) A robot that goes away mid-rollout: a cold rollout through the hub (robots reset) whose
# last robot's link goes down 10 s in. The others commit; that robot fails, saying why.
fleet_away() {
    local out=$TMP/out/fleet-hub_away expect=0 gone=${FLEET_IFACES[-1]} cutter
    fleet_reset "${#FLEET_SIMS[@]}" "$FLEET_RATE"
    fleet_hub_start
    gone=${FLEET_IFACES[-1]}
    "$DTS" image tag "$IMAGE:v1" "$IMAGE:current" >>"$LOG" 2>&1
    (sleep 10 && ip link set "$gone" down) &
    cutter=$!
    fleet_measured hub_away fleet_deploy --via "$HUB_ADDR:$HUB_PORT" --insecure
    wait "$cutter" || true
    ip link set "$gone" up || true
    fleet_states hub_away
    if jq -e --argjson n "${#FLEET_SIMS[@]}" '
        ([.robots[:-1][] | select(.state == "committed")] | length) == $n - 1
        and .robots[-1].state != "committed"
        and (.robots[-1].error | type == "string" and length > 0)' "$out" >/dev/null 2>&1; then
        expect=1
        log "hub_away: $(jq -r '.robots[-1] | "\(.robot): \(.state): \(.error)"' "$out")"
    else
        log "hub_away: not as expected (see $out)"
    fi
    record fleet hub_away expect "$expect"
}

fleet_has_via() { # (grep -q on the pipe could end dts with SIGPIPE: pipefail)
    local help
    help=$("$DTS" fleet deploy --help 2>/dev/null) || return 1
    [[ $help == *--via* ]]
}

bench_fleet() {
    local n=12 rate=20mbit build=1 hub_rate=1gbit only=loop,fleet,hub,registry
    while (($#)); do
        case $1 in
            --robots) n=${2:?--robots needs a number}; shift ;;
            --only) only=${2:?--only needs a list}; shift ;;
            --link-rate) rate=${2:?--link-rate needs a rate}; shift ;;
            --no-build) build=0 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; exit 2 ;;
        esac
        shift
    done
    FLEET_RATE=$rate
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 200)) || die "--robots $n: expected 1…200"
    rate_bits "$rate" >/dev/null
    local s
    for s in ${only//,/ }; do
        [[ $s =~ ^(loop|fleet|hub|registry)$ ]] || die "--only $only: expected a list of loop, fleet, hub, registry"
    done
    wanted() { [[ ,$only, == *,$1,* ]]; }
    ((EUID == 0)) || die "needs root (virtual robots: network namespaces, mounts)"
    local c
    for c in skopeo docker-registry python3 jq ip tc unshare; do
        command -v "$c" >/dev/null || die "needs $c"
    done
    local d
    for d in /var/lib/containers/cache /var/lib/containers /var/lib; do
        [[ -d $d ]] && { BLOB_INFO_CACHE=$d; break; }
    done
    ip link show "$FLEET_BRIDGE" >/dev/null 2>&1 && die "$FLEET_BRIDGE exists: another fleet bench runs, or one left it behind"

    local fixtures
    fixtures=$(bash "$here/fixtures")
    if ((build)); then
        log "building dts and dt-agent (release)"
        (cd "$repo" && cargo build --release --bins -q) || die "cargo build failed"
    fi
    DTS=${CARGO_TARGET_DIR:-$repo/target}/release/dts
    [[ -x $DTS && -x ${DTS%/dts}/dt-agent ]] || die "no release dts/dt-agent next to $DTS"
    local workload
    workload=$(python3 "$here/bench-data/deploy-workload" "$WORKLOAD_CACHE" "$fixtures/busybox/amd64/busybox") ||
        die "making the workload failed"

    TMP=$(mktemp -d /tmp/dts-bench.XXXXXX)
    exec {OUT_FD}>&1 {ERR_FD}>&2
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    LOG=$TMP/fleet.log
    RESULTS=$TMP/results
    : >"$LOG"
    : >"$RESULTS"
    export DTS_HOME=$TMP/dts-home DTS_SIM_BRIDGE=$FLEET_BRIDGE DTS_SIM_SUBNET=$FLEET_SUBNET
    local load0
    load0=$(cut -d' ' -f1 /proc/loadavg)

    # The deploy bench's workload, v1 and v2 (one ~10 KB code file edited).
    local ctx=$TMP/ctx layer v v2_file
    mkdir -p "$ctx"
    for layer in base code build; do
        cp -al "$workload/$layer" "$ctx/$layer" 2>/dev/null || cp -a "$workload/$layer" "$ctx/$layer"
    done
    v2_file=$ctx/code/$(jq -r .v2_file "$workload/workload.json")
    [[ -f $v2_file ]] || die "the workload's v2 file is missing; remove $workload"
    log "building $IMAGE:v1, v2 with dts devel build"
    for v in v1 v2; do
        [[ $v == v2 ]] && replace_file "$v2_file" edit_v2
        write_dockerfile "$ctx" "$v"
        "$DTS" devel build -C "$ctx" -t "$IMAGE:$v" --arch amd64 >>"$LOG" 2>&1 ||
            die "dts devel build of $v failed (see $LOG)"
    done
    cat >"$TMP/stack.yaml" <<EOF
services:
  app:
    image: $IMAGE:current
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "/bin/busybox", "true"]
      interval: 1s
      retries: 3
    x-duckiebot: {stage: 0}
EOF
    STACK=$TMP/stack.yaml

    local n_asked=$n
    log "starting $n virtual robots behind $rate links"
    FLEET_STARTED=1
    fleet_sims_up "$n" "$rate"
    n=${#FLEET_SIMS[@]}
    fleet_link "$LAPTOP_NS" "$LAPTOP_IF" "$FLEET_NET.250" "$rate"
    fleet_link "$HUB_NS" "$HUB_IF" "$HUB_ADDR" "$hub_rate"
    laptop "$DTS" duckiebot history "${FLEET_SIMS[0]}" --json >>"$LOG" 2>&1 ||
        die "the laptop namespace cannot reach ${FLEET_SIMS[0]} (see $LOG)"

    # (a) one robot cold (the yardstick), then the loop over the others.
    "$DTS" image tag "$IMAGE:v1" "$IMAGE:current" >>"$LOG" 2>&1
    fleet_measured one fleet_loop 1 1
    fleet_states one
    if ((n > 1)) && wanted loop; then
        fleet_measured loop_rest fleet_loop 2 "$n"
        fleet_states loop_rest
    fi

    # (b) dts fleet deploy, cold then one file.
    if wanted fleet; then
        fleet_reset "$n" "$rate"
        "$DTS" image tag "$IMAGE:v1" "$IMAGE:current" >>"$LOG" 2>&1
        fleet_measured fleet_cold fleet_deploy
        fleet_states fleet_cold
        "$DTS" image tag "$IMAGE:v2" "$IMAGE:current" >>"$LOG" 2>&1
        fleet_measured fleet_v2 fleet_deploy
        fleet_states fleet_v2
    fi

    # (d) through the lab hub, when dts has it.
    if ! wanted hub; then
        :
    elif fleet_has_via; then
        fleet_reset "$n" "$rate"
        fleet_hub_start
        "$DTS" image tag "$IMAGE:v1" "$IMAGE:current" >>"$LOG" 2>&1
        fleet_measured hub_cold fleet_deploy --via "$HUB_ADDR:$HUB_PORT" --insecure
        fleet_states hub_cold
        "$DTS" image tag "$IMAGE:v2" "$IMAGE:current" >>"$LOG" 2>&1
        fleet_measured hub_v2 fleet_deploy --via "$HUB_ADDR:$HUB_PORT" --insecure
        fleet_states hub_v2
        fleet_canary
        fleet_away
    else
        log "this dts has no \`fleet deploy --via\`: no hub scenario"
    fi

    # (c) the registry the Duckietown way: the laptop pushes once, every robot pulls.
    if wanted registry; then
        fleet_hub_start
        local ref=$HUB_ADDR:$HUB_PORT/$IMAGE:v1
        "$DTS" image tag "$IMAGE:v1" "$ref" >>"$LOG" 2>&1
        fleet_measured registry_push laptop "$DTS" image push "$ref" --insecure
        fleet_measured registry_pull fleet_registry_pull "$ref"
        rm -rf "$TMP/pull"
    fi

    record meta run robots_asked "$n_asked"
    record meta run robots "$n"
    record meta run link_rate "$rate"
    record meta run hub_link_rate "$hub_rate"
    record meta run commit "$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
    record meta run loadavg "$load0,$(cut -d' ' -f1 /proc/loadavg)"
    python3 "$here/bench-data/fleet-report" "$RESULTS"
}

cleanup_fleet() {
    ((FLEET_STARTED)) || return 0
    fleet_hub_stop
    local l pid
    for l in "${FLEET_LINKS[@]}"; do
        # Whatever still runs in the namespace (a skopeo interrupted by Ctrl-C) goes with it.
        for pid in $(ip netns pids "${l%%:*}" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        ip link del "${l#*:}" 2>/dev/null || true
        ip netns del "${l%%:*}" 2>/dev/null || true
    done
    fleet_sims_down
    if [[ -d /sys/class/net/$FLEET_BRIDGE/brif && -z $(ls -A "/sys/class/net/$FLEET_BRIDGE/brif") ]]; then
        ip link del "$FLEET_BRIDGE" 2>/dev/null || true
    fi
}

#!/usr/bin/env bash
# Soak on loopback: drives the b2b-convert binary against its own emulator for a bounded time,
# with kill cycles (SIGKILL, SIGTERM, SIGSTOP/SIGCONT of the tool), black-hole windows (the
# emulator stopped with SIGSTOP: connections are accepted by the kernel and never answered, for
# Graph and the token endpoint alike), lease takeovers (the tool frozen with SIGSTOP past the
# stale window while a second process takes the run over, then woken), injected faults and lost
# answers, fuzzed CSV dry runs, and a `retire` pass over the users who redeemed.
# Not part of `cargo test`. Prints the counts docs/reliability.md records.
#
#   scripts/soak.sh [MINUTES] [BINARY]      defaults: 30, target/release/b2b-convert
#
# Verdicts, all from the emulator's own records and the tool's status: every user the dry run
# approved converted, none invited twice (resends excepted), no item left pending or in flight,
# no process killed by anything but the soak, no fuzzed CSV making an item for a user the
# original file does not name, no password set or session revoked twice, every retired user's
# password set, and every frozen holder gone within 30 s of waking.
set -euo pipefail

MINUTES=${1:-30}
BIN=${2:-target/release/b2b-convert}
USERS=${SOAK_USERS:-2000}
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
# A lease is stale after 4 s instead of 60 s, so a takeover costs seconds (the tool's test knob).
STALE_S=4
export B2B_LEASE_STALE_MS=$((STALE_S * 1000))
ROLES=User.Invite.All,User.ReadWrite.All,Domain.Read.All,GroupMember.Read.All,User-PasswordProfile.ReadWrite.All,User.RevokeSessions.All,Directory.Read.All
WORK=$(mktemp -d /tmp/b2b-soak.XXXXXX)
DEADLINE=$(( $(date +%s) + MINUTES * 60 ))
cd "$WORK"
echo "soak: $MINUTES min, $USERS users per tenant, in $WORK" >&2

EMU_PID=
summary() {
cat <<EOF
tenants            $TENANTS ($USERS users each)
tool processes     $CYCLES disturbed cycles: $KILL9 SIGKILL, $TERM SIGTERM, $STOPS SIGSTOP 3 s, $HOLES black-hole windows of 7 s, $TAKEOVERS takeovers ($STUCK frozen holders still alive 30 s after waking)
approved           $APPROVED users by the dry runs
converted          $CONVERTED users ($FAILED failed: attempts spent under faults); $RESENT re-invitations by resend passes
fuzzed CSVs        $FUZZED dry runs; items naming a user not in the original: $FUZZ_BAD
retired            $RETIRED users (password set and sessions revoked); $REDEEMED redeemed
passwords twice    $PW_TWICE (revoked twice: $REV_TWICE); retired but no password at Graph: $PW_MISSING
invited twice      $DUPES
lost or unrecorded $MISSING
left pending / in flight at the end   $STRANDED
unexpected exits   $UNEXPECTED
EOF
}
cleanup() {
  [ -n "$EMU_PID" ] && kill -CONT "$EMU_PID" 2>/dev/null && kill "$EMU_PID" 2>/dev/null
  wait 2>/dev/null || true
  summary
}
trap cleanup EXIT

start_emulator() { # seed
  # The old tenant's file must be gone before the wait below: the redirect truncates it only
  # once the background process starts, and the old lines would be read as the new emulator's.
  rm -f emu.env
  "$BIN" emulator --generate "$USERS" --seed "$1" --write-csv users.csv \
    --fault-rate 0.1 --lost-response-rate 0.05 --latency-ms 2 \
    --app-roles "$ROLES" --app-directory-roles "User Administrator" \
    --writes-per-150s 0 --invitations-per-5s 0 --ru-per-10s 0 >emu.env 2>emu.log &
  EMU_PID=$!
  for _ in $(seq 100); do grep -q AZURE_CLIENT_SECRET emu.env 2>/dev/null && break; sleep 0.1; done
  set -a; . ./emu.env; set +a
}

# Counters.
CYCLES=0 KILL9=0 TERM=0 STOPS=0 HOLES=0 TENANTS=0 FUZZED=0 FUZZ_BAD=0
DUPES=0 MISSING=0 STRANDED=0 UNEXPECTED=0 CONVERTED=0 RESENT=0 APPROVED=0 FAILED=0
TAKEOVERS=0 STUCK=0 RETIRED=0 REDEEMED=0 PW_TWICE=0 REV_TWICE=0 PW_MISSING=0

# Exit codes a cycle may legitimately end with: 0/3 finished, 1 stopped (unreachable, lease),
# 130 signal, 137 SIGKILL by the soak. Anything else (101 panic, 134 abort, 143 a SIGTERM not
# handled, 153 SIGXFSZ) counts.
allowed() { case "$1" in 0|1|3|130|137) return 0;; *) return 1;; esac; }

cycle() { # db, command...
  local db=$1; shift
  "$BIN" --db "$db" "$@" >>tool.out 2>>tool.err &
  local pid=$! action=$(( RANDOM % 6 ))
  sleep "$(( RANDOM % 3 )).$(( RANDOM % 10 ))"
  case $action in
    0) kill -KILL "$pid" 2>/dev/null && KILL9=$((KILL9 + 1)) ;;
    1) kill -TERM "$pid" 2>/dev/null && TERM=$((TERM + 1)) ;;
    2) kill -STOP "$pid" 2>/dev/null && { STOPS=$((STOPS + 1)); sleep 3; kill -CONT "$pid"; } ;;
    3) kill -STOP "$EMU_PID" && { HOLES=$((HOLES + 1)); sleep 7; kill -CONT "$EMU_PID"; } ;;
    4) ;;
    5) # Frozen past the stale window while a second process takes the run over (not for the
       # `run` that creates the run: its takeover is a `resume`), then woken: the old holder
       # must send nothing more and exit within a heartbeat.
       if [ "$1" != run ] && kill -STOP "$pid" 2>/dev/null; then
         TAKEOVERS=$((TAKEOVERS + 1)); sleep $((STALE_S + 1))
         "$BIN" --db "$db" "$@" >>tool.out 2>>tool.err &
         local second=$!
         sleep 1; kill -CONT "$pid"
         local waited=0
         while kill -0 "$pid" 2>/dev/null && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
         if kill -0 "$pid" 2>/dev/null; then STUCK=$((STUCK + 1)); kill -KILL "$pid"; fi
         local rc2=0; wait "$second" || rc2=$?
         allowed "$rc2" || { UNEXPECTED=$((UNEXPECTED + 1)); echo "unexpected exit $rc2 (takeover): $*" >&2; }
       fi ;;
  esac
  local rc=0
  wait "$pid" || rc=$?
  allowed "$rc" || { UNEXPECTED=$((UNEXPECTED + 1)); echo "unexpected exit $rc: $*" >&2; }
  CYCLES=$((CYCLES + 1))
}

fuzz_csv() { # original → mutated copy on stdout
  awk -v seed="$RANDOM" 'BEGIN { srand(seed) }
    { line = $0; r = rand()
      if (r < 0.03) line = "\"" line                        # a quote that opens and may not close
      else if (r < 0.05) line = line ",\"note\nspanning\""  # a quoted notes cell over two lines
      else if (r < 0.07) gsub(/,/, ";", line)              # a semicolon row
      else if (r < 0.08) line = "\"\""                     # a lone blank quoted field
      else if (r < 0.09) line = line sprintf("%0500d", 0)  # a long field
      print line }' "$1"
}

seed=1
while [ "$(date +%s)" -lt "$DEADLINE" ]; do
  start_emulator "$seed"; TENANTS=$((TENANTS + 1))
  db=t$seed.db
  "$BIN" --db dry$seed.db run --csv users.csv --dry-run --rate 2000 >/dev/null 2>>tool.err || true
  approved=$("$BIN" --db dry$seed.db status --json | jq '.states.would_convert' || echo 0)

  # Fuzzed copies: dry runs only; no item may name a user the original does not.
  for f in 1 2 3; do
    fuzz_csv users.csv >fuzz.csv; FUZZED=$((FUZZED + 1))
    rm -f fuzz.db*
    rc=0; "$BIN" --db fuzz.db run --csv fuzz.csv --dry-run --rate 2000 >/dev/null 2>>tool.err || rc=$?
    allowed "$rc" || [ "$rc" = 2 ] || { UNEXPECTED=$((UNEXPECTED + 1)); echo "fuzz exit $rc" >&2; }
    if [ -f fuzz.db ] && [ "$rc" != 2 ]; then
      rm -f fuzz-report.json
      "$BIN" --db fuzz.db report 1 --out fuzz-report.json >/dev/null 2>&1 || true
      if [ -f fuzz-report.json ]; then
        cut -d, -f1 users.csv | tail -n +2 | sort -u >known.txt
        jq -r '.items[] | select(.state == "would_convert") | .userId // empty' fuzz-report.json \
          | sort -u >named.txt
        FUZZ_BAD=$((FUZZ_BAD + $(comm -13 known.txt named.txt | wc -l)))
      fi
    fi
  done

  # The live run: started once, then resumed through kill cycles until it finishes.
  NET=(--http-timeout 2 --unreachable-after 5)
  cycle "$db" run --csv users.csv --yes --rate 500 --concurrency 8 --max-attempts 50 "${NET[@]}"
  APPROVED=$((APPROVED + approved))
  for _ in $(seq 60); do
    status=$("$BIN" --db "$db" status --json 2>/dev/null || echo '{}')
    left=$(echo "$status" | jq '(.states.pending // 1) + (.states.in_flight // 0)')
    [ "$left" = 0 ] && break
    [ "$(date +%s)" -ge "$DEADLINE" ] && break
    cycle "$db" resume --yes --rate 500 --concurrency 8 "${NET[@]}"
  done
  # Finish without disturbance, so every tenant's verdict is complete.
  "$BIN" --db "$db" resume --yes --rate 500 >/dev/null 2>>tool.err || true

  # A resend pass through kill cycles too (only after a track: resend needs one).
  if "$BIN" --db "$db" track >/dev/null 2>>tool.err; then
    cycle "$db" resend 1 --yes
    "$BIN" --db "$db" resend 1 --yes >/dev/null 2>>tool.err || true
  fi

  # Half the converted users redeem; `retire` then sets their passwords and revokes their
  # sessions through a disturbed cycle, and finishes undisturbed.
  for id in $(curl -s "$B2B_GRAPH_URL/_emulator/invitations" \
      | jq -r '[.value[].userId] | unique | .[]' | awk 'NR % 2 == 0'); do
    curl -s -o /dev/null -X POST "$B2B_GRAPH_URL/_emulator/users/$id/redeem" && REDEEMED=$((REDEEMED + 1))
  done
  if "$BIN" --db "$db" track >/dev/null 2>>tool.err; then
    cycle "$db" retire 1 --yes
    "$BIN" --db "$db" retire 1 --yes >/dev/null 2>>tool.err || true
  fi
  secrets=$(curl -s "$B2B_GRAPH_URL/_emulator/secrets")
  revocations=$(curl -s "$B2B_GRAPH_URL/_emulator/revocations")
  twice='[.value[].userId] | group_by(.) | map(select(length > 1)) | length'
  PW_TWICE=$((PW_TWICE + $(echo "$secrets" | jq "$twice")))
  REV_TWICE=$((REV_TWICE + $(echo "$revocations" | jq "$twice")))
  with_password=$(echo "$secrets" | jq '[.value[].userId] | unique | length')

  status=$("$BIN" --db "$db" status --json)
  retired=$(echo "$status" | jq '.retired.passwords // 0')
  RETIRED=$((RETIRED + retired))
  PW_MISSING=$((PW_MISSING + (retired > with_password ? retired - with_password : 0)))
  converted=$(echo "$status" | jq '.states.converted')
  STRANDED=$((STRANDED + $(echo "$status" | jq '.states.pending + .states.in_flight')))
  CONVERTED=$((CONVERTED + converted))
  FAILED=$((FAILED + $(echo "$status" | jq '.states.failed')))
  invitations=$(curl -s "$B2B_GRAPH_URL/_emulator/invitations")
  DUPES=$((DUPES + $(echo "$invitations" | jq '[.value[] | select(.resetRedemption | not) | .userId]
                                              | group_by(.) | map(select(length > 1)) | length')))
  RESENT=$((RESENT + $(echo "$invitations" | jq '[.value[] | select(.resetRedemption)] | length')))
  first=$(echo "$invitations" | jq '[.value[] | select(.resetRedemption | not) | .userId] | unique | length')
  # Invited by Graph but not recorded converted, or recorded but never invited: both are losses.
  MISSING=$((MISSING + (first > converted ? first - converted : converted - first)))

  kill "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true; EMU_PID=
  seed=$((seed + 1))
done


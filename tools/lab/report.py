#!/usr/bin/env python3
"""The lab's boot log -> a table of checks and figures per backend, and a last
line of JSON with the ratios ours/kernel and ours/qdisk. Exit 1 if a check
failed or an expected one is missing."""
import json
import re
import sys

log_path, mode, backends = sys.argv[1], sys.argv[2], sys.argv[3].split("+")
lines = open(log_path, errors="replace").read().splitlines()

def expected(backend):
    if backend == "faults":
        return ["daemon-ready", "xl-create", "disk-present", "lvm-volume", "dm-before-fault", "fault-read-error",
                "fault-write-error", "fault-recovered", "daemon-stopped"]
    if backend == "restart":
        return ["daemon-ready", "xl-create", "disk-present", "restart-kill-1", "restart-kill-2", "restart-kill-3",
                "restart-term", "restart-fio", "restart-dmesg", "daemon-stopped"]
    names = ["xl-create", "disk-present", "fio-verify", "pattern-readback", "backing-readback"]
    net = backend != "qdisk"
    if net:
        names += ["ping-dom0", "ping-guest", "pinged-by-dom0"]
    if backend == "xenbackd":
        names += ["daemon-ready", "daemon-stopped"]
    if mode == "full":
        names += ["filesystem", "discard-reaches-backing", "disk-detach-attach", "reboot-reconnect"]
        if net:
            names += ["ping-dom0-after-reattach", "ping-dom0-after-reboot"]
    return names

checks = {b: {} for b in backends}
fio = {b: {} for b in backends}
iperf = {b: {} for b in backends}
notes = {b: [] for b in backends}
cpu = {b: {} for b in backends}
restarts = {b: {} for b in backends}
phases = {}
for line in lines:
    m = re.search(r"LAB-CHECK (\S+) (\S+) (ok|FAIL) ?(.*)", line)
    if m and m.group(1) in checks:
        checks[m.group(1)].setdefault(m.group(2), (m.group(3), m.group(4).strip()))
        continue
    m = re.search(r"LAB-FIO (\S+) (\S+) iops=(\d+) kibps=(\d+)", line)
    if m and m.group(1) in fio:
        fio[m.group(1)][m.group(2)] = {"iops": int(m.group(3)), "mibps": round(int(m.group(4)) / 1024, 1)}
        continue
    m = re.search(r"LAB-IPERF (\S+) (tx|rx) mbps=([\d.]+)", line)
    if m and m.group(1) in iperf:
        iperf[m.group(1)][m.group(2)] = float(m.group(3))
        continue
    m = re.search(r"LAB-CPU (\S+) (\S+) dom0_cpus=([\d.]+) backend_process_cpus=([\d.]+)(?: user=([\d.]+) system=([\d.]+))?", line)
    if m and m.group(1) in cpu:
        cpu[m.group(1)][m.group(2)] = {"dom0_cpus": float(m.group(3)), "xenbackd_cpus": float(m.group(4))}
        if m.group(5):
            cpu[m.group(1)][m.group(2)].update(xenbackd_user=float(m.group(5)), xenbackd_system=float(m.group(6)))
        continue
    # restart: dom0's view of each stop (ms from the signal) and the guest's longest I/O latency.
    m = re.search(r"LAB-RESTART (\S+) (kill-\d+|term|guest) (.*)", line)
    if m and m.group(1) in restarts:
        v = {}
        for k, x in re.findall(r"(\w+)=(\S+)", m.group(3).split(" records=")[0]):
            v[k] = int(x) if x.isdigit() else x
        restarts[m.group(1)].setdefault(m.group(2), v)
        continue
    m = re.search(r"(LAB-(?:NEGOTIATED|INFO)) (\S+) (.*)", line)
    if m and m.group(2) in notes:
        notes[m.group(2)].append(m.group(3).strip())
        continue
    m = re.match(r"\s*([\d.]+) .*LAB-T [\d.]+ (dom0-ready|dom0-done)", line)
    if m:
        phases[m.group(2)] = float(m.group(1))

failed = []
print(f"Xen lab ({mode}), log {log_path}")
if "dom0-ready" in phases:
    print(f"dom0 ready {phases['dom0-ready']:.0f} s after QEMU started; all done at {phases.get('dom0-done', float('nan')):.0f} s")
for b in backends:
    print(f"\n== {b}")
    for name in expected(b) + sorted(set(checks[b]) - set(expected(b))):
        status, detail = checks[b].get(name, ("FAIL", "missing: the run never got this far"))
        if status != "ok":
            failed.append(f"{b}/{name}")
        print(f"  {status:4} {name:26} {detail}")
    for n in notes[b]:
        print(f"       {n}")
    def load(job):
        c = cpu[b].get(job)
        if not c:
            return ""
        own = ""
        if b in ("xenbackd", "faults"):
            own = f", xenbackd {c['xenbackd_cpus']:.2f}"
            if "xenbackd_user" in c:
                own += f" (user {c['xenbackd_user']:.2f}, system {c['xenbackd_system']:.2f})"
        return f"   dom0 {c['dom0_cpus']:.2f} CPUs busy{own}"
    for name, v in restarts[b].items():
        if name == "guest":
            print(f"  restart {'guest':23} {v.get('runs', '?')} fio runs, {v.get('failed', '?')} failed; longest write "
                  f"{v.get('write_lat_max_ms', '?')} ms, read {v.get('read_lat_max_ms', '?')} ms")
        else:
            print(f"  restart {name:23} SIG{v.get('signal', '?')} exit {v.get('exit', '?')}: stopped {v.get('stopped_ms', '?')} ms, "
                  f"ready {v.get('ready_ms', '?')} ms, resumed {v.get('pause_ms', '?')} ms after the signal")
    for job, v in fio[b].items():
        print(f"  fio  {job:26} {v['iops']:7d} IOPS {v['mibps']:8.1f} MiB/s{load(job)}")
    for direction, v in iperf[b].items():
        print(f"  iperf {direction:25} {v:8.0f} Mbit/s{load('iperf_' + direction)}")

ratios = {}
for base in ("kernel", "qdisk"):
    if "xenbackd" in backends and base in backends:
        r = {}
        for job, v in fio["xenbackd"].items():
            if job in fio[base] and fio[base][job]["iops"]:
                r[job] = round(v["iops"] / fio[base][job]["iops"], 2)
        for direction, v in iperf["xenbackd"].items():
            if direction in iperf[base] and iperf[base][direction]:
                r["iperf_" + direction] = round(v / iperf[base][direction], 2)
        ratios[f"xenbackd/{base}"] = r
if ratios:
    print()
    for k, r in ratios.items():
        print(f"{k}: " + ", ".join(f"{j} {x}" for j, x in r.items()))
print(f"\n{'PASSED' if not failed else 'FAILED: ' + ', '.join(failed)}")
print(json.dumps({"lab": mode, "passed": not failed, "failed": failed,
                  "fio": fio, "iperf": iperf, "cpu": cpu, "ratios": ratios,
                  "restart": {b: v for b, v in restarts.items() if v},
                  "dom0_ready_s": phases.get("dom0-ready"), "total_s": phases.get("dom0-done")}))
sys.exit(1 if failed else 0)

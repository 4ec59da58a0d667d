"""8-GPU projection of the paper's grid: list scheduling as Ray does it (a free GPU takes the first ready task
in submission order; kd/dkd are ready once their run's teacher has finished)."""
mono=7*60+48; teacher=8*60+36; kd=17*60+24-teacher; dkd=17*60+20-teacher; disc=14*60+25; legacy=14*60+48
per = dict(mono=mono/10, teacher=teacher/5, kd=kd/10, dkd=dkd/10, discomkd=disc/5, legacy=legacy/5)
def tasks(runs, ablation):
    out=[]
    for r in range(runs):
        out += [(r,"mono",per["mono"])]*2 + [(r,"teacher",per["teacher"])] + [(r,"kd",per["kd"])]*2 + [(r,"dkd",per["dkd"])]*2
        out += [(r,"discomkd",per["discomkd"]),(r,"legacy",per["legacy"])] + ([(r,"abl",per["discomkd"])]*5 if ablation else [])
    return out
def simulate(ts, gpus):
    pending=list(ts); running=[]; t=0.0; teacher_done={}
    while pending or running:
        while len(running)<gpus:
            ready=[x for x in pending if x[1] not in ("kd","dkd") or teacher_done.get(x[0],1e18)<=t]
            if not ready: break
            x=ready[0]; pending.remove(x); running.append((t+x[2],x))
        running.sort(key=lambda e:e[0]); end,x=running.pop(0); t=end
        if x[1]=="teacher": teacher_done[x[0]]=end
    return t
for abl in (False, True):
    ts=tasks(5,abl); serial=sum(x[2] for x in ts)
    for g in (1,8):
        e=simulate(ts,g); print(f"ablation={abl} gpus={g} tasks={len(ts)} serial={serial/60:.1f} min wall={e/60:.1f} min speed-up={serial/e:.2f} (bound {min(g, serial/max(x[2] for x in ts)):.2f})")

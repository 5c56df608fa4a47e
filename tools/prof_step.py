# tools/prof_step.py CSV[.xz]: one decode step of an ncu CSV (tools/prof_decode.sh ncu stage: every kernel,
# gpu__time_duration.sum and dram__bytes_read.sum) summed per kernel and grid: where the step's time goes.
import csv,sys,collections,statistics,lzma
f=sys.argv[1]
rows=[r for r in csv.reader((lzma.open(f,'rt') if f.endswith('.xz') else open(f))) if len(r)>10]
h=rows[0]; rows=rows[1:]; ix={k:i for i,k in enumerate(h)}
d=collections.OrderedDict()
for r in rows:
    e=d.setdefault(r[ix['ID']],{'name':r[ix['Kernel Name']].split('(')[0][:60],'grid':r[ix['Grid Size']],'blk':r[ix['Block Size']]})
    e[r[ix['Metric Name']]]=float(r[ix['Metric Value']].replace(',',''))
L=list(d.values())
emb=[i for i,e in enumerate(L) if e['name'].startswith('embed_kernel')]
# the last complete step: between the last two embeds; a CSV of one step (bench --prof-step under ncu
# --profile-from-start off) is all of it
a,b=(emb[-2],emb[-1]) if len(emb)>=2 else (0,len(L))
step=L[a:b]
tot=sum(e['gpu__time_duration.sum'] for e in step); byt=sum(e['dram__bytes_read.sum'] for e in step)
print(f"{sys.argv[1]}: one decode step = kernels {a}..{b}: {len(step)} kernels, sum {tot/1e3:.1f} us, DRAM read {byt/1e9:.3f} GB -> {byt/tot:.0f} GB/s over the kernel time")
agg=collections.OrderedDict()
for e in step:
    k=(e['name'],e['grid'])
    g=agg.setdefault(k,[0,0,0]); g[0]+=1; g[1]+=e['gpu__time_duration.sum']; g[2]+=e['dram__bytes_read.sum']
print(f"{'kernel':62s} {'grid':>14s} {'n':>4s} {'us total':>9s} {'us each':>8s} {'MB each':>8s} {'GB/s':>6s}")
for (n,gr),(c,t,by) in sorted(agg.items(),key=lambda x:-x[1][1]):
    print(f"{n:62s} {gr:>14s} {c:4d} {t/1e3:9.1f} {t/c/1e3:8.2f} {by/c/1e6:8.2f} {by/t:6.0f}")

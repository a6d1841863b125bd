"""No import cycles: between modules (a file or a mod.rs), and between the
layers (the top-level folders of src/). ARCHITECTURE.md, "Code map".
Reads `crate::` and `super::` paths outside comments and #[cfg(test)]."""
import re, pathlib, itertools
mods={}
for p in pathlib.Path('src').rglob('*.rs'):
    rel=p.relative_to('src').with_suffix('')
    parts=list(rel.parts)
    if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
    if parts and parts[-1]=='tests': continue  # test modules
    mods['::'.join(parts)]=p.read_text()
names=set(mods)
def resolve(path):
    segs=path.split('::')
    for i in range(len(segs),0,-1):
        c='::'.join(segs[:i])
        if c in names: return c
    return None
edges={m:set() for m in names}
for m,t in mods.items():
    t=re.split(r'#\[cfg\(test\)\]\s*mod tests', t)[0]
    t=re.sub(r'//.*','',t)
    for ref in re.findall(r'crate::((?:[a-z_0-9]+::)*[a-z_0-9]+)', t):
        r=resolve(ref)
        if r is not None and r!=m and not m.startswith(r+'::') and not r.startswith(m+'::') if m else False:
            edges[m].add(r)
    # super:: references
    for ref in re.findall(r'super::([a-z_0-9]+)', t):
        parent='::'.join(m.split('::')[:-1])
        r=resolve((parent+'::' if parent else '')+ref)
        if r and r!=m: edges[m].add(r)
# SCC
idx={};low={};st=[];on=set();out=[];c=[0]
import sys; sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
for v in names:
    if v not in idx: sc(v)

# The same over the top-level layers (src/<folder> or src/<file>.rs).
top = lambda m: m.split('::')[0]
layer = {}
for m, es in edges.items():
    for e in es:
        if top(m) != top(e):
            layer.setdefault(top(m), set()).add(top(e))
def reach(a, b, seen=()):
    return any(n == b or (n not in seen and reach(n, b, seen + (n,))) for n in layer.get(a, ()))
layer_cycles = sorted({tuple(sorted((a, b))) for a in layer for b in layer[a] if reach(b, a)})
for k in sorted(layer):
    print(f"  {k} -> {', '.join(sorted(layer[k]))}")
if out or layer_cycles:
    print("import cycles between modules:", out, "between layers:", layer_cycles)
    sys.exit(1)
print("ok: no import cycles")

// Prints, as JSON, what the kubelet would run for one pod of a StatefulSet in a
// kustomization directory (manifests.mjs podContainer), for tests/deploy/pods.sh.
//
// usage: node podspec.mjs K8S_DIR STATEFULSET ORDINAL POD_IP NAMESPACE [CONFIGMAP KEY=VALUE...]
// The optional tail stands for `kubectl patch configmap CONFIGMAP` before the pod starts.
import { loadKustomization, podContainer } from "./manifests.mjs";

const usage = "usage: node podspec.mjs K8S_DIR STATEFULSET ORDINAL POD_IP NAMESPACE [CONFIGMAP KEY=VALUE...]";
const [dir, sts, ordinal, podIP, namespace, patchName, ...patches] = process.argv.slice(2);
if (!namespace || !/^[0-9]+$/.test(ordinal) || (patchName && patches.length === 0) ||
    patches.some((p) => !/^[A-Za-z_][A-Za-z0-9_.-]*=/.test(p))) {
  console.error(usage);
  process.exit(2);
}
// PATH as the image sets it (Debian's default; deploy/docker/Dockerfile keeps it).
const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
try {
  const objs = loadKustomization(dir).map((x) => x.obj);
  if (patchName) {
    const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name === patchName);
    if (!cm) throw new Error(`no ConfigMap ${patchName}`);
    for (const p of patches) {
      const eq = p.indexOf("=");
      cm.data = { ...(cm.data ?? {}), [p.slice(0, eq)]: p.slice(eq + 1) };
    }
  }
  const spec = podContainer(objs, sts, Number(ordinal), { podIP, namespace, imagePath });
  process.stdout.write(JSON.stringify(spec) + "\n");
} catch (e) {
  console.error(`podspec: ${e.message}`);
  process.exit(1);
}

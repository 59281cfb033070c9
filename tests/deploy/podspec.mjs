// Prints, as JSON, what the kubelet would run for one pod of a StatefulSet in a
// kustomization directory (manifests.mjs podContainer), for tests/deploy/pods.sh.
//
// usage: node podspec.mjs K8S_DIR STATEFULSET ORDINAL POD_IP NAMESPACE
import { loadKustomization, podContainer } from "./manifests.mjs";

const [dir, sts, ordinal, podIP, namespace] = process.argv.slice(2);
if (!namespace || !/^[0-9]+$/.test(ordinal)) {
  console.error("usage: node podspec.mjs K8S_DIR STATEFULSET ORDINAL POD_IP NAMESPACE");
  process.exit(2);
}
// PATH as the image sets it (Debian's default; deploy/docker/Dockerfile keeps it).
const imagePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
try {
  const objs = loadKustomization(dir).map((x) => x.obj);
  const spec = podContainer(objs, sts, Number(ordinal), { podIP, namespace, imagePath });
  process.stdout.write(JSON.stringify(spec) + "\n");
} catch (e) {
  console.error(`podspec: ${e.message}`);
  process.exit(1);
}

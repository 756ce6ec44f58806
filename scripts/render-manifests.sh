#!/usr/bin/env bash
# Renders manifests/ from their sources: the CRD from the operator's types, the operator from
# the Helm chart. A test fails when the committed files differ from this output.
set -euo pipefail
cd "$(dirname "$0")/.."
helm="${HELM:-$(scripts/tools.sh)/helm}"
cargo run -q -p raftkv-operator -- crd > manifests/crd.yaml
cp manifests/crd.yaml charts/raftkv/crds/raftcluster.yaml
cp dashboards/raftkv.json charts/raftkv/dashboards/raftkv.json
"$helm" template raftkv charts/raftkv --namespace raftkv-system --skip-crds > manifests/operator.yaml
"$helm" template demo charts/raftkv --namespace default --skip-crds --show-only templates/raftcluster.yaml \
  --set cluster.enabled=true --set cluster.name=demo > manifests/example-cluster.yaml

// Times onnxruntime's MatMulNBits (onnxruntime-node, CPU) for bench/peers/peers.py. Our own timing
// harness around the public JS API.
//
//   node ort_bench.js ORT_PACKAGE_DIR MODEL NODES K N M THREADS REPS MIN_TIME
//
// MODEL holds NODES MatMulNBits nodes on one input (see onnx_model.py). Time per pass over W =
// session.run time / NODES: the cold model has distinct weights per node, totalling more than
// 256 MiB, so the per-run overhead (JS -> native, setImmediate) is amortized over NODES passes as
// in a real model; the hot model has one node, so its time includes one run's overhead.
// Outputs are preallocated tensors (fetches), so no output buffer is allocated or copied per run.
// Prints one JSON object on stdout.
'use strict';
const path = require('path');

async function main() {
  const [ortDir, model, nodesArg, kArg, nArg, mArg, threadsArg, repsArg, minTimeArg] = process.argv.slice(2);
  if (minTimeArg === undefined) {
    console.error('usage: node ort_bench.js ORT_PACKAGE_DIR MODEL NODES K N M THREADS REPS MIN_TIME');
    process.exit(2);
  }
  const ort = require(path.resolve(ortDir));
  const [nodes, K, N, M, threads, reps] = [nodesArg, kArg, nArg, mArg, threadsArg, repsArg].map(Number);
  const minTime = Number(minTimeArg);
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all',
  });
  const a = new Float32Array(M * K);
  for (let i = 0; i < a.length; ++i) a[i] = Math.sin(i * 0.618) ;
  const feeds = {A: new ort.Tensor('float32', a, [M, K])};
  const fetches = {};
  for (const name of session.outputNames) fetches[name] = new ort.Tensor('float32', new Float32Array(M * N), [M, N]);

  const run = () => session.run(feeds, fetches);
  const seconds = () => Number(process.hrtime.bigint()) * 1e-9;
  await run();  // warm-up: thread pool, arena, page faults
  let t0 = seconds();
  await run();
  const one = Math.max(seconds() - t0, 1e-9);
  const runsPerRep = Math.max(1, Math.ceil(minTime / one));
  const perPass = [];
  for (let r = 0; r < reps; ++r) {
    t0 = seconds();
    for (let i = 0; i < runsPerRep; ++i) await run();
    perPass.push((seconds() - t0) / (runsPerRep * nodes));
  }
  perPass.sort((x, y) => x - y);
  const mid = perPass.length >> 1;
  const median = perPass.length % 2 ? perPass[mid] : 0.5 * (perPass[mid - 1] + perPass[mid]);
  const check = fetches[session.outputNames[0]].data[0];  // the outputs were really written
  console.log(JSON.stringify({
    peer: 'onnxruntime', ort_version: ort.env.versions ? ort.env.versions.common : undefined,
    nodes_per_run: nodes, runs_per_rep: runsPerRep, reps, median_seconds: median, best_seconds: perPass[0],
    output_0_0: check,
  }));
  await session.release();
}

main().catch((e) => { console.error(e); process.exit(1); });

// A small independent OPC UA server (node-opcua) for cellfab's interop test.
// Usage: node server.js PORT   -> prints "READY opc.tcp://127.0.0.1:PORT/peer" once listening.
// Namespace "urn:cellfab:test:node-peer", object "Peer" with:
//   s=Peer.Ramp       Double, +1 every 100 ms, SourceTimestamp = time of the change
//   s=Peer.Running    Boolean true
//   s=Peer.Broken     Double with StatusCode BadSensorFailure
//   s=Peer.Uncertain  Double 4.5 with StatusCode UncertainLastUsableValue
//   s=Peer.Setpoint   Double 21.0, writable
"use strict";

const { OPCUAServer, DataType, StatusCodes } = require("node-opcua");

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node server.js PORT");
  process.exit(2);
}

async function main() {
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    resourcePath: "/peer",
    buildInfo: { productName: "cellfab-node-peer" },
    alternateHostname: ["127.0.0.1"],
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace("urn:cellfab:test:node-peer");
  const peer = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Peer", nodeId: "s=Peer" });

  let ramp = 0.0;
  const rampVar = ns.addVariable({
    componentOf: peer, browseName: "Ramp", nodeId: "s=Peer.Ramp", dataType: "Double",
    minimumSamplingInterval: 50,
  });
  rampVar.setValueFromSource({ dataType: DataType.Double, value: ramp }, StatusCodes.Good);
  setInterval(() => {
    ramp += 1.0;  // setValueFromSource stamps SourceTimestamp with the time of the change
    rampVar.setValueFromSource({ dataType: DataType.Double, value: ramp }, StatusCodes.Good);
  }, 100);

  ns.addVariable({
    componentOf: peer, browseName: "Running", nodeId: "s=Peer.Running", dataType: "Boolean",
    value: { dataType: DataType.Boolean, value: true },
  });
  const broken = ns.addVariable({
    componentOf: peer, browseName: "Broken", nodeId: "s=Peer.Broken", dataType: "Double",
  });
  broken.setValueFromSource({ dataType: DataType.Double, value: 0.0 }, StatusCodes.BadSensorFailure);
  const uncertain = ns.addVariable({
    componentOf: peer, browseName: "Uncertain", nodeId: "s=Peer.Uncertain", dataType: "Double",
  });
  uncertain.setValueFromSource({ dataType: DataType.Double, value: 4.5 }, StatusCodes.UncertainLastUsableValue);
  ns.addVariable({
    componentOf: peer, browseName: "Setpoint", nodeId: "s=Peer.Setpoint", dataType: "Double",
    accessLevel: "CurrentRead | CurrentWrite", userAccessLevel: "CurrentRead | CurrentWrite",
    value: { dataType: DataType.Double, value: 21.0 },
  });

  await server.start();
  console.log(`READY opc.tcp://127.0.0.1:${port}/peer`);
  const stop = async () => { await server.shutdown(0); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });

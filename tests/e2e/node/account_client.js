// A Node.js client built from the exported contracts alone: proto-loader reads the .proto files
// under CONTRACTS (nothing else on its include path), grpc-js calls CreateAccount and GetAccount.
// Prints {"created": ..., "got": ...} as JSON on stdout; any failure exits non-zero.
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const { CONTRACTS, TALLY_ADDR, TALLY_TOKEN, ACCOUNT_EMAIL } = process.env;

const definition = protoLoader.loadSync("tally/account/v1/account.proto", {
  includeDirs: [CONTRACTS],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { AccountService } = grpc.loadPackageDefinition(definition).tally.account.v1;
const client = new AccountService(TALLY_ADDR, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${TALLY_TOKEN}`);
const deadline = () => new Date(Date.now() + 20000);

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

async function main() {
  const created = await call("CreateAccount", {
    account: { display_name: "Node Client Ltd", email: ACCOUNT_EMAIL, currency_code: "EUR" },
    request_id: `node-${ACCOUNT_EMAIL}`,
  });
  const got = await call("GetAccount", { id: created.id });
  process.stdout.write(JSON.stringify({ created, got }));
  client.close();
}

main().catch((error) => {
  process.stderr.write(`node client failed: ${error.code} ${error.details || error.message}\n`);
  process.exit(1);
});

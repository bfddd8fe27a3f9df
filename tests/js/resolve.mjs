// Resolve credentials with one provider of the AWS SDK for JavaScript v3, as an app would,
// and print them as JSON for the Python test that compares them with what was issued.
// Usage: node resolve.mjs instance|container|http|chain   (endpoints come from the environment)
import {
  fromContainerMetadata,
  fromHttp,
  fromInstanceMetadata,
  fromNodeProviderChain,
} from "@aws-sdk/credential-providers";

const providers = {
  instance: () => fromInstanceMetadata({ timeout: 2000, maxRetries: 1 }),
  container: () => fromContainerMetadata({ timeout: 2000, maxRetries: 1 }),
  http: () => fromHttp({}),
  chain: () => fromNodeProviderChain(),
};

const make = providers[process.argv[2]];
if (!make) {
  console.error(`usage: node resolve.mjs ${Object.keys(providers).join("|")}`);
  process.exit(2);
}
const creds = await make()();
console.log(JSON.stringify({
  accessKeyId: creds.accessKeyId,
  secretAccessKey: creds.secretAccessKey,
  sessionToken: creds.sessionToken,
  expiration: creds.expiration ? creds.expiration.toISOString() : null,
}));
